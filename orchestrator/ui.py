"""Progress bar over the trials (with ETA) and one summary line per trial, with rich."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from runners.record import Record


def energy_text(r: Record, phase: str = "generate") -> str:
    e = r.energy(phase)
    if e is None:
        return "energy n/a"
    return f"{e.joules:.1f} J {e.source}" if e.source else "energy unavailable"


def trial_line(label: str, rec: dict[str, Any]) -> str:
    r = Record(rec)
    span = ""
    if r.host.get("started_unix") and r.host.get("exited_unix"):
        span = f" | container {r.host['exited_unix'] - r.host['started_unix']:.1f} s"
    if not r.is_ok:
        err = r.error or {}
        log = f" (log: {r.host['log']})" if r.host.get("log") else ""
        return (f"[red]✗[/] {escape(label)} [red]failed[/] [{escape(str(err.get('type')))}] "
                f"{escape(str(err.get('message', ''))[:200])}{escape(log)}{span}")
    tps = r.metrics().tokens_per_s
    return (f"[green]✓[/] {escape(label)} — {r.tokens.get('prompts')} prompts, {r.tokens.get('output')} new tokens, "
            f"generate {r.duration('generate') or 0:.2f} s" + (f", {tps:.1f} tok/s" if tps else "")
            + f", {energy_text(r)}{span}")


def clock(s: float) -> str:
    h, rem = divmod(int(round(s)), 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


class Reporter:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(highlight=False)
        self.progress: Progress | None = None
        self.task = None
        self.n = 0
        self.expected_s: float | None = None  # the budget's wall time for the trials to run (None: unknown)

    def note(self, msg: str) -> None:
        (self.progress.console if self.progress else self.console).print(msg)

    def start(self, total: int) -> None:
        if total == 0:
            return
        expected = "?" if self.expected_s is None else clock(self.expected_s)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn(f"of {expected} expected · ETA"),
                                 TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("trials", total=total)

    def trial_started(self, t) -> None:
        self.n += 1
        if self.progress:
            self.progress.update(self.task, description=f"{t.label}")

    def trial_finished(self, t, rec: dict[str, Any]) -> None:
        self.note(f"[{self.n}] {trial_line(t.label, rec)}")
        if self.progress:
            self.progress.advance(self.task)

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None
