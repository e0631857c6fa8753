"""Every command against storage it cannot use, as real processes: an output path it cannot write (under a
regular file: ENOTDIR, which root meets too), a tracking server that does not answer (a closed port of
127.0.0.1) and a malformed tracking URI. Each must exit 1 with one line and no traceback, or, for the
commands that never write there or never use the store, succeed; none may leave a run RUNNING."""

from __future__ import annotations

import socket
import time

import pytest

import harness as H

pytestmark = pytest.mark.faults


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


def test_every_command_against_unusable_storage(reference_find, workdir, figures):
    ref = reference_find
    job = H.job_dir(ref.root)
    ticket = job / "r0" / "L01" / "ticket"
    (workdir / "a-file").write_text("not a folder\n")
    blocked = workdir / "a-file" / "out"
    transfer = workdir / "storage-transfer.toml"
    transfer.write_text(H.TRANSFER_RECIPE)
    commands = {  # name -> (arguments, whether it writes under --out, whether it uses the tracking store)
        "find": (["find", str(ref.recipe), "--workers", "1"], True, True),
        "transfer": (["transfer", str(job), "--to", str(transfer), "--workers", "1"], True, True),
        "report folder": (["report", str(job)], True, True),
        "report experiment": (["report", "find-reference"], True, True),
        "instability": (["instability", str(ref.recipe), "--rewind", "0,10", "--points", "3"], True, True),
        "export": (["export", str(ticket)], True, False),
        "show": (["show", str(ticket)], False, False),
        "overlap": (["overlap", str(ticket), str(job / "r1" / "L01" / "ticket")], False, False),
        "tasks": (["tasks"], False, False),
    }
    uris = {"unreachable": f"http://127.0.0.1:{_closed_port()}", "malformed": "bogus://x"}
    began, lines, bad = time.monotonic(), [], 0
    for name, (args, writes, uses_store) in commands.items():
        trials = []
        if writes:
            out = ["--out", str(blocked / ("m.pt" if name == "export" else "o"))]
            trials.append(("unwritable --out", args + out, ref.uri, True))
        for kind, uri in uris.items():
            out = ["--out", str(workdir / "storage" / name.replace(" ", "-") / ("m.pt" if name == "export" else kind))]
            trials.append((f"{kind} URI", args + (out if writes else []), uri, uses_store))
        for what, argv, uri, should_fail in trials:
            run = H.run(argv, H.env(uri), workdir, timeout=120)
            text = "\n".join([*run.err, run.text()])
            line = H.one_error_line(run)
            ok = "Traceback" not in text and ((run.popen.returncode == 1 and line is not None) if should_fail
                                               else run.popen.returncode == 0)
            bad += not ok
            lines.append(f"{name}, {what}: exit {run.popen.returncode} in {run.seconds():.1f} s: "
                         + ((line or "ok")[:140] if ok else "FAIL: " + " | ".join(run.err[-3:])[:300]))
    for line in lines:
        print(line, flush=True)
    running = H.record(ref.uri, "find-reference").running
    figures.report(f"unusable storage: {len(lines) - bad}/{len(lines)} command runs ended in one line or "
                   f"succeeded where they need nothing there, 0 tracebacks: {'yes' if not bad else 'no'}; "
                   f"runs left RUNNING: {running} ({time.monotonic() - began:.0f} s)", not bad and not running)
    assert not bad, "see the lines above"
