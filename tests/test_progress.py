"""The progress reporter: counts, elapsed time and ETA from synthetic events (a fake clock), its three
displays, and the CLI's plain lines in a pipe."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import types

import pytest
from click.testing import CliRunner

from ticketx import pool
from ticketx import progress as P
from ticketx.cli import main

ANSI = re.compile(r"\x1b\[")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def arm(level: int, name: str, **extra):
    return {"replicate": 0, "level": level, "arm": name, "steps": 1000, **extra}


def record():
    return {"record": {"early_stop_step": 10, "at_early_stop": {}, "seconds": 1.0}}


def lines_printer(out: list[str]):
    def printer(event, info):
        if event in ("start", "done", "skip"):
            out.append(f"{event} {P.arm_name(info)}")
    return printer


def twelve_arms(report, clock: Clock) -> None:
    """plan 12 arms on 2 workers; 2 finished by an earlier run; 2 start at t=0; one is done at t=100."""
    report("resume", {"job_dir": "x", "run_id": "y"})
    report("plan", {"total": 12, "workers": 2})
    report("skip", {**arm(0, "dense"), **record()})
    report("skip", {**arm(1, "ticket"), **record()})
    report("start", {**arm(1, "random_reinit"), "density": 0.5, "run_id": "a"})
    report("start", {**arm(2, "ticket"), "density": 0.25, "run_id": "b"})
    clock.now = 50.0
    report("eval", {**arm(2, "ticket"), "step": 250, "metrics": {"val_loss": 0.3, "val_accuracy": 0.9123}})
    clock.now = 100.0
    report("done", {**arm(1, "random_reinit"), **record()})


def test_plain_lines_count_skips_as_done_and_give_the_eta_of_this_runs_speed():
    clock, out, printed = Clock(), io.StringIO(), []
    report = P.reporter(mode="plain", stream=out, printer=lines_printer(printed), clock=clock)
    assert isinstance(report, P.PlainReporter)
    twelve_arms(report, clock)
    # one arm ran here, 100 s; 9 left: 8 not started (800 s) + the running one from step 250 at t=50 at
    # 100 s per arm (75 s left at t=50, 25 s at t=100) = 825 s of work on 2 workers
    assert out.getvalue() == "[3/12 arms, 0:01:40 elapsed, ETA 0:06:52]\n"
    assert printed == ["skip r0 L00 dense", "skip r0 L01 ticket", "start r0 L01 random_reinit",
                       "start r0 L02 ticket", "done r0 L01 random_reinit"]
    clock.now = 200.0
    report("done", {**arm(2, "ticket"), **record()})
    assert out.getvalue().splitlines()[-1] == "[4/12 arms, 0:03:20 elapsed, ETA 0:10:00]"  # 8 x 150 s / 2
    assert not ANSI.search(out.getvalue()) and "\r" not in out.getvalue()
    report.close()


def test_skips_count_as_done_but_never_feed_the_speed():
    clock = Clock()
    t = P.Tally(clock=clock)
    t.update("plan", {"total": 4, "workers": 1})
    for level in range(3):
        t.update("skip", {**arm(level, "ticket"), **record()})
    clock.now = 500.0
    assert (t.done, t.skipped) == (3, 3)
    assert t.seconds_per_arm() is None and t.eta() is None
    assert t.line() == "[3/4 arms, 0:08:20 elapsed, ETA unknown]"
    t.update("start", arm(3, "ticket"))
    clock.now = 530.0
    t.update("done", {**arm(3, "ticket"), **record()})
    assert t.arm_seconds == [30.0] and t.line() == "[4/4 arms, 0:08:50 elapsed]"


def test_eta_before_any_arm_finished_comes_from_the_running_arms_steps():
    clock = Clock()
    t = P.Tally(clock=clock)
    t.update("plan", {"total": 4, "workers": 1})
    t.update("start", arm(0, "dense"))
    assert t.eta() is None  # no step yet
    clock.now = 50.0
    t.update("eval", {**arm(0, "dense"), "step": 250, "metrics": {"val_loss": 1.0}})
    assert t.seconds_per_arm() == pytest.approx(200.0)
    assert t.eta() == pytest.approx(3 * 200 + 150)  # 3 arms to start, 3/4 of the running one
    clock.now = 80.0  # no new evaluation: the running arm's share is extrapolated, the ETA counts down
    assert t.eta() == pytest.approx(3 * 200 + 120)


def test_a_resumed_arm_counts_as_a_whole_arm_at_the_speed_it_ran():
    clock = Clock()
    t = P.Tally(clock=clock)
    t.update("plan", {"total": 3, "workers": 4})
    t.update("start", {**arm(1, "ticket"), "resumed_at": 500})
    clock.now = 50.0
    t.update("done", {**arm(1, "ticket"), **record()})
    assert t.arm_seconds == [100.0]
    assert t.eta() == pytest.approx(2 * 100 / 2)  # two arms left: two of the four workers busy


def test_unknown_events_change_nothing_and_no_plan_means_no_total():
    clock, out = Clock(), io.StringIO()
    report = P.reporter(mode="plain", stream=out, clock=clock)
    report("line", {"line": "whatever"})
    report("warning", {"message": "careful"})
    report("start", arm(0, "dense"))
    clock.now = 3725.0
    report("done", {**arm(0, "dense"), **record()})
    assert out.getvalue() == "[1 arms done, 1:02:05 elapsed]\n"


def test_live_display_shows_the_counts_and_running_arms_under_the_printers_lines():
    from rich.console import Console
    clock, screen = Clock(), io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)

    def printer(event, info):  # as the CLI's: click.echo to stdout, warnings to stderr
        if event == "done":
            print(f"[{P.arm_name(info)}] done: early stop at 10")
        if event == "warning":
            print(f"warning: {info['message']}", file=sys.stderr)

    report = P.reporter(mode="live", console=console, printer=printer, clock=clock, metric="val_accuracy")
    assert isinstance(report, P.LiveReporter)
    with report:
        twelve_arms(report, clock)
        report("warning", {"message": "a checkpoint was unreadable"})
        report("start", {**arm(2, "random_prune"), "density": 0.25, "run_id": "c"})
        shown = Console(file=io.StringIO(), width=100)  # the display as text, no codes
        shown.print(report.render())
        text = shown.file.getvalue()
    assert "3/12 arms" in text and "0:01:40 elapsed" in text and "ETA 0:06:52" in text
    assert "r0 L02 ticket" in text and "250/1000" in text and "91.23%" in text
    assert "r0 L02 random_prune" in text and "0/1000" in text
    out = screen.getvalue()
    assert ANSI.search(out)  # redrawn in place
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "[r0 L01 random_reinit] done: early stop at 10" in plain
    assert "warning: a checkpoint was unreadable" in plain
    last = plain.rindex("3/12 arms")  # the last frame, drawn by close(), under the printed lines
    assert plain.index("done: early stop at 10") < last and "r0 L02 random_prune" in plain[last:]
    assert report.live is None


def test_auto_picks_plain_off_a_terminal_and_live_on_one(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TERM", raising=False)
    assert isinstance(P.reporter(stream=io.StringIO()), P.PlainReporter)
    live = P.reporter(stream=Tty())
    assert isinstance(live, P.LiveReporter) and live.console.is_terminal
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(P.reporter(stream=Tty()), P.PlainReporter)
    for off in ("off", False, None):
        quiet = P.reporter(mode=off, stream=io.StringIO())
        assert type(quiet) is P.Reporter and quiet.mode == "off"
    with pytest.raises(ValueError, match="progress mode must be one of auto, live, plain, notebook, off; got 'fancy'"):
        P.reporter(mode="fancy")


def test_off_shows_nothing_but_still_prints_the_printers_lines(capsys):
    printed = []
    with P.reporter(mode="off", printer=lines_printer(printed)) as report:
        twelve_arms(report, Clock())
    assert len(printed) == 5 and capsys.readouterr().out == ""


def test_notebook_mode_updates_one_display_in_place(monkeypatch):
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj.data))

    class HTML:
        def __init__(self, data):
            self.data = data

    def display(obj, display_id=False):
        assert display_id
        shown.append(("display", obj.data))
        return Handle()

    ZMQInteractiveShell = type("ZMQInteractiveShell", (), {})
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: ZMQInteractiveShell()
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.HTML, ipython_display.display = HTML, display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)

    clock = Clock()
    with P.reporter(clock=clock) as report:
        assert isinstance(report, P.NotebookReporter)
        twelve_arms(report, clock)
    assert [kind for kind, _ in shown][:2] == ["display", "update"]
    assert all(kind == "update" for kind, _ in shown[1:])
    last = shown[-1][1]
    assert "<pre" in last and "3/12 arms" in last and "r0 L02 ticket" in last


def test_pool_tells_the_plan_before_any_unit_runs():
    events = []
    pool.run({0: (), 1: (0,), 2: ()}, lambda k: events.append(("unit", k)) or {}, None, workers=1,
             progress=lambda e, i: events.append((e, dict(i))))
    assert events[0] == ("plan", {"total": 3, "workers": 1}) and len(events) == 4


def test_instability_command_counts_rewind_steps(cli_env, recipe, tmp_path):
    r = CliRunner().invoke(main, ["instability", str(recipe), "--rewind", "0,50", "--points", "3",
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    first = next(i for i, x in enumerate(lines) if x.startswith("k=0: error barrier"))
    assert re.fullmatch(r"\[1/2 rewind steps, \d+:\d\d:\d\d elapsed, ETA \d+:\d\d:\d\d\]", lines[first + 1])
    assert lines[first + 2].startswith("k=50: ")
    last = next(i for i, x in enumerate(lines) if x.startswith("k=50: error barrier"))
    assert re.fullmatch(r"\[2/2 rewind steps, \d+:\d\d:\d\d elapsed\]", lines[last + 1])


def test_cli_in_a_pipe_prints_plain_progress_lines(cli_env, recipe, tmp_path, experiment):
    r = subprocess.run([sys.executable, "-m", "ticketx", "find", str(recipe), "--experiment", experiment,
                        "--set", "train.steps=60"], env=cli_env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert not ANSI.search(r.stdout) and "\r" not in r.stdout
    lines = r.stdout.splitlines()
    counts = [x for x in lines if re.fullmatch(r"\[\d/4 arms, \d+:\d\d:\d\d elapsed(, ETA \d+:\d\d:\d\d)?\]", x)]
    assert [x.split("/")[0] for x in counts] == ["[1", "[2", "[3", "[4"]
    assert "ETA" in counts[0] and "ETA" not in counts[-1]
    dense = lines.index(next(x for x in lines if x.startswith("[r0 L00 dense] done:")))
    assert lines[dense + 1].startswith("[1/4 arms, ")  # each count line follows an arm's own line
    assert "[r0 L00 dense] density 100.00%" in r.stdout and "MLflow run:" in r.stdout
