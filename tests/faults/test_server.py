"""The MLflow server dies in the middle of a job; a tracking URI that never answers.

The suite's server (`mlflow server` on 127.0.0.1, sqlite backend, artifacts proxied to a folder) is
SIGKILLed, with its uvicorn worker, while a find job (--workers 2) trains arms: the job must fail within
SERVER_BOUND seconds with one line naming the tracking URI. The server is started again on the same store
and port, the job re-run: it must resume (finished arms not retrained) and leave the same record as an
uninterrupted job: the same results, the same runs all FINISHED with their metrics, each ticket run with
its ticket artifact, the parent with results.csv and results.json, nothing RUNNING.
"""

from __future__ import annotations

import socket
import time

import pytest

import harness as H

pytestmark = pytest.mark.faults

SERVER_BOUND = 60.0  # seconds from the server's death to the job's exit
UNREACHABLE_BOUND = 30.0  # seconds for `ticketx find` (Python start included) against a dead URI


def test_server_killed_mid_job(mlflow_server, reference_find, workdir, figures):
    uri, ref = mlflow_server.uri, reference_find
    root = workdir / "server-kill"
    args = ["find", str(ref.recipe), "--workers", "2", "--out", str(root), "--experiment", "server-kill"]
    job = H.start(args, H.env(uri), workdir)
    job.wait_for_line("[r0 L01 ticket] done", 300)
    mlflow_server.kill()
    died = time.monotonic()
    rc = job.wait(300)
    failed_in = job.ended - died
    left = H.wait_group_gone(job)
    line = H.one_error_line(job)
    print(f"  job exit {rc} {failed_in:.1f} s after the server died: {line or job.err[-5:]}")
    failed_well = rc == 1 and line is not None and uri in line and failed_in <= SERVER_BOUND and not left

    mlflow_server.start()
    again = H.run(args, H.env(uri), workdir, timeout=300)
    rec = H.record(uri, "server-kill")
    problems = []
    if again.popen.returncode != 0:
        problems.append(f"re-run exited {again.popen.returncode}: {' | '.join(again.err[-3:])}")
    if "resuming" not in again.text() or "already done" not in again.text():
        problems.append("the re-run did not resume the job (no 'resuming' / 'already done' lines)")
    if H.results(root) != ref.results:
        problems.append("results differ from the uninterrupted job's")
    if rec.contents != ref.record.contents or rec.active != ref.record.active:
        extra = sorted(set(rec.active) - set(ref.record.active))
        problems.append(f"{len(rec.active)} runs, not the uninterrupted job's {len(ref.record.active)} runs with the "
                        f"same params and metrics" + (f" (extra: {extra})" if extra else ""))
    if rec.running:
        problems.append(f"{rec.running} run(s) left RUNNING")
    problems += H.incomplete(uri, "server-kill")
    for p in problems:
        print(f"  {p}")
    figures.report(f"server kill: failed in {failed_in:.1f} s naming the URI: {'yes' if failed_well else 'NO'}; "
                   f"resumed: {'yes' if not problems else 'NO'} ({len(rec.active)} runs, "
                   f"{len(rec.deleted)} deleted, none RUNNING: {'yes' if not rec.running else 'NO'})",
                   failed_well and not problems)
    assert failed_well, f"exit {rc} after {failed_in:.1f} s: {job.err[-5:]}"
    assert not problems, problems


def test_unreachable_tracking_uri_fails_fast(reference_find, workdir, figures):
    from ticketx.tracking import Tracker, TrackingError

    closed = f"http://127.0.0.1:{H.free_port()}"  # bound, then closed: nothing listens there
    silent = socket.socket()  # listens, never answers: the TCP handshake completes, no HTTP reply comes
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    mute = f"http://127.0.0.1:{silent.getsockname()[1]}"
    results = []
    try:
        for what, uri in (("closed port", closed), ("silent server", mute)):
            began = time.monotonic()
            with pytest.raises(TrackingError, match=uri):
                Tracker(uri).check_reachable()
            check = time.monotonic() - began
            job = H.run(["find", str(reference_find.recipe), "--workers", "2", "--out", str(workdir / "unreach"),
                         "--experiment", "unreachable"], H.env(uri), workdir, timeout=120)
            line = H.one_error_line(job)
            ok = job.popen.returncode == 1 and line is not None and uri in line and job.seconds() <= UNREACHABLE_BOUND
            print(f"  {what} {uri}: exit {job.popen.returncode} in {job.seconds():.1f} s "
                  f"(reachability check {check:.2f} s): {line or job.err[-3:]}")
            results.append((what, job.seconds(), check, ok))
    finally:
        silent.close()
    figures.report("unreachable URI: " + "; ".join(
        f"{what} failed in {secs:.1f} s ({check:.1f} s of it the check, the rest Python starting)"
        + ("" if ok else " NOT CLEANLY") for what, secs, check, ok in results), all(r[3] for r in results))
    assert all(r[3] for r in results), results
