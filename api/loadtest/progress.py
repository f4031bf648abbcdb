"""The live progress display (rich), shown only when stdout is a terminal."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from api.loadtest.callers import Counters
from api.loadtest.stats import percentile


class Progress:
    """``with Progress(counters, ...):`` redraws a small table from the live counters four times a second."""

    def __init__(self, counters: Counters, console: Console, *, callers: int, deadline_s: float) -> None:
        self.counters = counters
        self.callers = callers
        self.deadline_s = deadline_s
        self.started = time.monotonic()
        self._live = Live(console=console, refresh_per_second=4, transient=False, get_renderable=self.render)

    def render(self) -> Table:
        c = self.counters
        recent = c.recent_turn_ms[-1000:]
        p50, p95 = percentile(recent, 50), percentile(recent, 95)
        table = Table.grid(padding=(0, 2))
        table.add_row(
            f"[bold]{time.monotonic() - self.started:6.1f} s[/bold] / {self.deadline_s:g} s",
            f"callers {c.callers_active}/{self.callers}",
            f"connected {c.connected}",
            f"open {c.sessions_open}",
        )
        table.add_row(
            f"runs {c.runs_completed} done",
            f"[red]{c.runs_failed} failed[/red]" if c.runs_failed else "0 failed",
            f"turns {c.turns}",
            "turn p50/p95 " + ("-" if p50 is None or p95 is None else f"{p50:.0f}/{p95:.0f} ms"),
        )
        if c.errors:
            table.add_row(f"[yellow]errors {c.errors}[/yellow]", f"last: {c.last_error[:80]}", "", "")
        return table

    def __enter__(self) -> Progress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)
