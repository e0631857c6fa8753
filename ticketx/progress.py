"""How much of a job is done: arms done of the total, time elapsed, an estimate of the time left, the arms
running now; shown live on a terminal, as plain lines in a log, or as a bar in a notebook.

A reporter is a `Progress` callable (`reporter(event, info)`): pass it as the `progress=` of `run_find`,
`run_transfer` or `pool.run`, and close it (or use it as a context manager) when the job ends:

    from ticketx import progress
    with progress.reporter() as report:            # mode="auto": notebook, terminal or plain lines
        result = run_find(cfg, task, tracker, root=out, progress=report)

It learns the number of arms from the "plan" event ({"total": n, "workers": w}, sent once by
`ticketx.pool.run`), counts "done" and "skip" (an arm an earlier run finished) as done, follows "start"
and "eval" for the arms running now, and ignores any other event. Every event also goes to `printer`
(the CLI's per-arm lines, say): in live mode its output is printed above the display.

The estimate of the time left comes from the arms that ran in this run only (a skipped arm took no time
here): the mean wall time from an arm's "start" to its "done" (its setup, before "start", is not
counted; an arm resumed from a checkpoint counts as the whole arm at the speed it ran), or, before any
arm has finished, the speed of the running arms' steps so far. The work left is that mean for each arm
not yet started plus what is left of each running arm (extrapolated from its last evaluation), shared
among the job's workers (at most one per arm left), as if every worker were always busy: an estimate
that is low where fewer arms than workers are ready at a time (the ticket chain of an iterative search
waits for each level).

`rich` is imported only when a live or notebook display starts, so that importing ticketx stays fast.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any, Literal

Progress = Callable[[str, Mapping[str, Any]], None]
Mode = Literal["auto", "live", "plain", "notebook", "off"]
MODES: tuple[str, ...] = ("auto", "live", "plain", "notebook", "off")


def duration(seconds: float) -> str:
    """Seconds as H:MM:SS ("0:04:10"), whole seconds."""
    return str(timedelta(seconds=int(max(0.0, seconds))))


def arm_name(info: Mapping[str, Any]) -> str:
    """What a running arm is called on screen: "r0 L02 ticket" (with " lr=0.1" in a transfer), or
    info["name"] where the job names its units itself."""
    if "name" in info:
        return str(info["name"])
    name = f"r{info.get('replicate', 0)} L{info.get('level', 0):02d} {info.get('arm', '')}"
    return name + (f" lr={info['lr']:g}" if isinstance(info.get("lr"), (int, float)) else "")


def _key(info: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(info.get(k) for k in ("replicate", "level", "arm", "lr", "name"))


@dataclass
class RunningArm:
    """An arm between its "start" and its "done": where it is and how fast it went."""

    name: str
    steps: int | None  # None: the job did not say (the arm's share done is then unknown)
    began: float  # clock at "start"
    first_step: int  # where it started: 0, or the step its checkpoint was saved at
    step: int  # the latest evaluation's step (first_step before any)
    at: float  # clock at that evaluation (at "start" before any)
    metric: tuple[str, float] | None = None  # the latest value of the metric shown

    def share(self, step: int) -> float:
        return min(1.0, step / self.steps) if self.steps else 0.0


class Tally:
    """What a reporter knows of a job: arms done of the total, the arms running, and how fast they go.

    `clock` is seconds on any monotonic scale (time.monotonic by default); a test passes its own. `metric`
    is the evaluation metric shown for running arms (e.g. "val_accuracy"); None shows the first "val_"
    metric an evaluation reports.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, metric: str | None = None,
                 unit: str = "arms") -> None:
        self.clock, self.metric, self.unit = clock, metric, unit
        self.began = clock()
        self.total: int | None = None  # None until the "plan" event
        self.workers = 1
        self.done = 0  # arms finished, in this run or (skipped) an earlier one
        self.skipped = 0  # of those, finished by an earlier run
        self.running: dict[tuple[Any, ...], RunningArm] = {}
        self.arm_seconds: list[float] = []  # per arm that ran in this run: its whole time, start to done

    def update(self, event: str, info: Mapping[str, Any]) -> None:
        """Take one progress event into account; events it does not know change nothing."""
        now = self.clock()
        if event == "plan":
            self.total, self.unit = int(info["total"]), str(info.get("unit", self.unit))
            self.workers = max(1, int(info.get("workers", 1)))
        elif event == "start":
            first = int(info.get("resumed_at") or 0)
            steps = info.get("steps")
            self.running[_key(info)] = RunningArm(arm_name(info), int(steps) if steps else None, now,
                                                  first, first, now)
        elif event == "eval":
            arm = self.running.get(_key(info))
            if arm is not None:
                arm.step, arm.at = int(info["step"]), now
                metrics = info.get("metrics", {})
                name = self.metric or next((k for k in metrics if k.startswith("val_")), None)
                if name is not None and name in metrics:
                    arm.metric = (name, float(metrics[name]))
        elif event == "done":
            self.done += 1
            arm = self.running.pop(_key(info), None)
            if arm is not None:
                share = 1.0 - arm.share(arm.first_step)  # a resumed arm ran only the rest of its steps here
                if share > 0:
                    self.arm_seconds.append((now - arm.began) / share)
        elif event == "skip":
            self.done += 1
            self.skipped += 1

    def elapsed(self) -> float:
        """Seconds since the tally began."""
        return self.clock() - self.began

    def seconds_per_arm(self) -> float | None:
        """The mean time one arm takes, from the arms that ran in this run; before any finished, from the
        running arms' speed so far; None before any arm has reported a step."""
        if self.arm_seconds:
            return sum(self.arm_seconds) / len(self.arm_seconds)
        guesses = [(a.at - a.began) / (a.share(a.step) - a.share(a.first_step))
                   for a in self.running.values() if a.share(a.step) > a.share(a.first_step)]
        return sum(guesses) / len(guesses) if guesses else None

    def eta(self) -> float | None:
        """Seconds left, as the module docstring says; None while the total or the speed is unknown."""
        if self.total is None:
            return None
        left = self.total - self.done
        if left <= 0:
            return 0.0
        mean = self.seconds_per_arm()
        if mean is None:
            return None
        now = self.clock()
        work = max(0, left - len(self.running)) * mean  # arms not started yet
        for a in self.running.values():  # what is left of each, from its last known point at the mean speed
            work += max(0.0, mean * (1.0 - a.share(a.step)) - (now - a.at))
        return work / min(self.workers, left)

    def counts(self) -> str:
        """"3/12 arms" (or "3 arms done" before the total is known)."""
        return f"{self.done}/{self.total} {self.unit}" if self.total is not None else f"{self.done} {self.unit} done"

    def line(self) -> str:
        """One plain line: "[3/12 arms, 0:04:10 elapsed, ETA 0:13:05]"; no ETA without a total, nor once all
        are done."""
        parts = [self.counts(), f"{duration(self.elapsed())} elapsed"]
        eta = self.eta()
        if self.total is not None and self.done < self.total:
            parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA unknown")
        return f"[{', '.join(parts)}]"


class Reporter:
    """A `Progress` callable that keeps a `Tally` and passes every event on to `printer`; shows nothing
    itself (mode "off"). Close it when the job ends, or use it as a context manager."""

    mode: str = "off"

    def __init__(self, *, printer: Progress | None = None, clock: Callable[[], float] = time.monotonic,
                 metric: str | None = None, unit: str = "arms") -> None:
        self.printer = printer
        self.tally = Tally(clock=clock, metric=metric, unit=unit)
        self._lock = threading.Lock()  # a live display renders from its own thread

    def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        self._print(event, info)
        with self._lock:
            self.tally.update(event, info)
        self._show(event)

    def _print(self, event: str, info: Mapping[str, Any]) -> None:
        if self.printer is not None:
            self.printer(event, info)

    def _show(self, event: str) -> None:
        """Show the tally after `event` (nothing here)."""

    def close(self) -> None:
        """End the display, leaving its last state on screen."""

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlainReporter(Reporter):
    """Plain lines for logs and pipes: after each arm's "done", one line of counts, elapsed time and ETA;
    no colour, no cursor movement, no carriage return."""

    mode = "plain"

    def __init__(self, *, stream: IO[str] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.stream = stream if stream is not None else sys.stdout

    def _show(self, event: str) -> None:
        if event == "done":
            with self._lock:
                line = self.tally.line()
            self.stream.write(line + "\n")
            self.stream.flush()


class LiveReporter(Reporter):
    """A display redrawn in place on a terminal (rich): a bar of arms done with elapsed time and ETA, and
    a table of the running arms (step, latest metric) under it; the printer's lines (stdout, and stderr in
    yellow) scroll above it.

    `console` is a `rich.console.Console` (a test passes one writing to a StringIO); by default one on
    `stream` (sys.stdout). The display starts with the first event, so lines printed before stay above it.
    """

    mode = "live"

    def __init__(self, *, stream: IO[str] | None = None, console: Any = None, refresh_per_second: float = 4.0,
                 **kw: Any) -> None:
        super().__init__(**kw)
        if console is None:
            from rich.console import Console
            console = Console(file=stream if stream is not None else sys.stdout)
        self.console, self.refresh_per_second = console, refresh_per_second
        self.live: Any = None
        self._closed = False

    def _print(self, event: str, info: Mapping[str, Any]) -> None:
        if self.printer is None:
            return
        out, err = io.StringIO(), io.StringIO()
        # the printer writes to sys.stdout (click.echo): caught here and printed through the console,
        # which keeps the live display under it
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            self.printer(event, info)
        for text, style in ((out.getvalue(), None), (err.getvalue(), "yellow")):
            if text:
                self.console.print(text.rstrip("\n"), style=style, markup=False, highlight=False,
                                   soft_wrap=True)

    def _show(self, event: str) -> None:
        if self.live is None and not self._closed:
            from rich.live import Live
            self.live = Live(get_renderable=self.render, console=self.console,
                             refresh_per_second=self.refresh_per_second, transient=False)
            self.live.start()
        elif self.live is not None and event in ("plan", "start", "done", "skip"):
            self.live.refresh()

    def render(self) -> Any:
        """The display as a rich renderable: the bar line, then the running arms."""
        with self._lock:
            return _renderable(self.tally)

    def close(self) -> None:
        self._closed = True
        if self.live is not None:
            self.live.stop()  # draws the last state and leaves it on screen
            self.live = None


class NotebookReporter(Reporter):
    """The same display as `LiveReporter`, as HTML in a Jupyter cell, updated in place (IPython's display
    handles; no ipywidgets needed). The printer's lines print below it in the cell."""

    mode = "notebook"

    def __init__(self, *, every_s: float = 0.5, **kw: Any) -> None:
        super().__init__(**kw)
        self.every_s, self.handle, self.last = every_s, None, float("-inf")

    def _show(self, event: str) -> None:
        now = time.monotonic()
        if event in ("plan", "start", "done", "skip") or now - self.last >= self.every_s:
            self.last = now
            self._update()

    def _update(self) -> None:
        from IPython.display import HTML, display
        from rich.console import Console
        console = Console(file=io.StringIO(), record=True, width=100, force_jupyter=False)
        with self._lock:
            console.print(_renderable(self.tally))
        html = HTML(console.export_html(inline_styles=True,
                                        code_format='<pre style="font-family:monospace">{code}</pre>'))
        if self.handle is None:
            self.handle = display(html, display_id=True)
        else:
            self.handle.update(html)

    def close(self) -> None:
        if self.handle is not None:
            self._update()


def _renderable(t: Tally) -> Any:
    """The bar line and the running-arms table of `t`, for rich."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    eta = t.eta()
    left = t.total is not None and t.done < t.total
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=float(t.total or 0) or None, completed=float(t.done), width=40),
                t.counts(), f"{duration(t.elapsed())} elapsed",
                (f"ETA {duration(eta)}" if eta is not None else "ETA unknown") if left else "")
    if not t.running:
        return bar
    arms = Table(box=None, padding=(0, 2), show_edge=False)
    metric = next((a.metric[0] for a in t.running.values() if a.metric), t.metric or "")
    arms.add_column("running")
    arms.add_column("step", justify="right")
    arms.add_column(metric, justify="right")
    for a in sorted(t.running.values(), key=lambda a: a.began):
        value = a.metric[1] if a.metric and a.metric[0] == metric else None
        arms.add_row(a.name, f"{a.step}/{a.steps}" if a.steps else str(a.step),
                     _value(metric, value))
    return Group(bar, arms)


def _value(metric: str, value: float | None) -> str:
    """A metric as the CLI shows it: accuracy in percent, anything else to 4 significant digits."""
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if metric.endswith("accuracy") else f"{value:.4g}"


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (or Colab): IPython loaded, with a notebook shell."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is None:
        return False
    return type(shell).__name__ == "ZMQInteractiveShell" or "google.colab" in str(type(shell))


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def reporter(*, mode: Mode | bool | None = "auto", stream: IO[str] | None = None, printer: Progress | None = None,
             metric: str | None = None, unit: str = "arms", clock: Callable[[], float] = time.monotonic,
             console: Any = None) -> Reporter:
    """A progress reporter for a job, shown as `mode` says.

    Args:
        mode: "auto" picks "notebook" in a Jupyter kernel, "live" when `stream` is a terminal, else
            "plain"; "off" (or False, None) shows nothing. "live" forces the redrawn display (with
            terminal codes) even on a file.
        stream: where to show it (default sys.stdout).
        printer: called with every event first (the CLI's per-arm lines); its output goes above a live
            display. Mode "off" with a printer still prints its lines.
        metric: the evaluation metric shown for running arms, e.g. "val_accuracy" (default: the first
            "val_" metric reported).
        unit: what the job's units are called until its "plan" event names them ("arms").
        clock: monotonic seconds, for tests.
        console: the rich Console of a live display (tests), instead of one on `stream`.

    Raises:
        ValueError: an unknown mode, naming the modes there are.
    """
    if mode is True:
        mode = "auto"
    if mode is False or mode is None:
        mode = "off"
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}; got {mode!r}")
    out = stream if stream is not None else sys.stdout
    if mode == "auto":
        mode = "notebook" if stream is None and in_notebook() else "live" if _is_terminal(out) else "plain"
    kw: dict[str, Any] = {"printer": printer, "clock": clock, "metric": metric, "unit": unit}
    if mode == "live":
        if console is None:
            from rich.console import Console
            console = Console(file=out, force_terminal=True)
        return LiveReporter(console=console, **kw)
    if mode == "plain":
        return PlainReporter(stream=out, **kw)
    if mode == "notebook":
        return NotebookReporter(**kw)
    return Reporter(**kw)
