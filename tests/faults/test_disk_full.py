"""The disk fills up while a ticket is written: a clean failure, and the ticket before it intact.

The job folder lives on a small tmpfs (mounted by the suite when it runs as root). Just before the find
job saves the ticket of replicate 0, level 2 (in a pool worker, after its level-1 ticket arm trained),
the faulty plugin fills the file system, leaving one page: the ticket's masks file fits, its weights
file does not (ENOSPC half-way through the write). Where mount is not allowed, that save runs under a
4 KiB file-size limit instead (RLIMIT_FSIZE: EFBIG). The job must exit 1 with one line naming the
ticket and the cause, leave no run RUNNING, no half-written ticket and no temporary folder; the level-1
ticket must load and hold the same tensors as the uninterrupted job's. The same is checked for
`ticket.save` over an existing ticket: the old one stays whole.
"""

from __future__ import annotations

import os
import subprocess

import pytest

import harness as H
import mutations as MU
from faulty import PAGE, fill
from ticketx import ticket as T

pytestmark = pytest.mark.faults


def mount_tmpfs(path, size: str) -> bool:
    if os.environ.get("TICKETX_FAULTS_NO_MOUNT") == "1":  # to try the file-size-limit way where mount works
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def same_tensors(a, b) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in (T.MASKS, T.WEIGHTS))


def test_disk_full_while_writing_a_ticket(reference_find, workdir, figures):
    disk = workdir / "small-disk"
    disk.mkdir()
    mounted = mount_tmpfs(disk, "8m")
    problems: list[str] = []
    try:
        problems += save_over_a_ticket(disk, mounted)
        root, log = disk / "runs", workdir / "disk-full.fault"
        fault = f"disk-full:r0/L02/ticket:{disk / 'ballast'}" if mounted else "fsize:r0/L02/ticket:4096"
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        args = ["find", str(reference_find.recipe), "--workers", "2", "--out", str(root), "--experiment", "disk-full"]
        job = H.run(args, H.env(uri, TICKETX_FAULT=fault, TICKETX_FAULT_LOG=str(log)), workdir)
        line = H.one_error_line(job)
        cause = "No space left on device" if mounted else "File too large"
        print(f"  job exit {job.popen.returncode}: {line or job.err[-5:]}")
        if not log.exists():
            problems.append("the disk never filled (the hook did not fire)")
        if job.popen.returncode != 1 or line is None or cause not in line or "r0/L02/ticket" not in line:
            problems.append(f"not a one-line error naming the ticket and {cause!r}: exit {job.popen.returncode}, "
                            f"{job.err[-3:]}")
        jobdir = H.job_dir(root)
        level2 = jobdir / "r0" / "L02"
        leftovers = sorted(p.name for p in level2.iterdir() if p.name.startswith(".ticket"))
        if leftovers:
            problems.append(f"temporary folders left in {level2}: {leftovers}")
        if (level2 / "ticket").exists():
            problems.append("a level-2 ticket exists although its write failed")
        before = jobdir / "r0" / "L01" / "ticket"
        try:
            T.load(before)
            if not same_tensors(before, H.job_dir(reference_find.root) / "r0" / "L01" / "ticket"):
                problems.append("the level-1 ticket's tensors differ from the uninterrupted job's")
        except (T.TicketError, OSError) as e:
            problems.append(f"the level-1 ticket does not load: {e}")
        running = H.record(uri, "disk-full").running
        if running:
            problems.append(f"{running} run(s) left RUNNING")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    for p in problems:
        print(f"  {p}")
    how = "tmpfs filled, ENOSPC" if mounted else "RLIMIT_FSIZE, EFBIG"
    figures.report(("disk full: clean failure, previous ticket intact" if not problems else
                    "disk full: FAILED (" + "; ".join(problems) + ")") + f" ({how})", not problems)
    assert not problems, problems


def save_over_a_ticket(disk, mounted: bool) -> list[str]:
    """`ticket.save` onto an existing ticket with no space left: TicketWriteError, the old ticket whole."""
    import resource
    import signal

    folder = disk / "lib"
    folder.mkdir()
    path = MU.make_base(folder / "t")
    old = T.load(path)
    newer = T.make({k: 1 - v for k, v in old.masks.items()}, {k: v + 1 for k, v in old.weights.items()}, task={})
    problems = []
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        if mounted:
            fill(str(disk / "ballast-lib"), 0)
        else:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, limit[1]))
        with pytest.raises(T.TicketWriteError) as e:
            T.save(newer, path)
    except BaseException as err:  # noqa: BLE001 (reported as a problem, with the rest)
        problems.append(f"ticket.save on a full disk: {type(err).__name__}: {err}")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        (disk / "ballast-lib").unlink(missing_ok=True)
    if not problems and (str(path) not in str(e.value) or "\n" in str(e.value)):
        problems.append(f"ticket.save's error does not name the ticket in one line: {e.value}")
    if sorted(p.name for p in folder.iterdir()) != ["t"]:
        problems.append(f"ticket.save left {sorted(p.name for p in folder.iterdir())}")
    try:
        kept = T.load(path)
        if not all(kept.weights[k].equal(old.weights[k]) for k in old.weights):
            problems.append("the old ticket's weights changed")
    except T.TicketError as e:
        problems.append(f"the old ticket does not load: {e}")
    return problems
