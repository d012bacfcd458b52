"""What a person watching `evo run` sees: a rich live view on a terminal, one plain log line per
event when output is redirected (an overnight `nohup` log must be readable)."""

from __future__ import annotations

import sys
import time
from collections import deque
from datetime import datetime, timezone
from typing import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from evo.core import format as fmt
from evo.storage import ACTIVE, STALE_AFTER_SECONDS, Event, Run

STOPPED, UNRESPONSIVE = "STOPPED", "UNRESPONSIVE"


def run_status(run: Run, owner_alive: bool, heartbeat_age: float | None,
               stale_after: float = STALE_AFTER_SECONDS) -> tuple[str, str]:
    """A run's status as a person should read it, and a note on it. The archive keeps ACTIVE until
    its owner writes otherwise, which an owner killed with -9, or lost with its machine, never does:
    ACTIVE is shown only while the owner lives and its heartbeat is fresh."""
    resume = f"resume with `evo run --resume --name {run.name}`"
    if run.status != ACTIVE:
        return run.status, ""
    if not run.owner:
        return STOPPED, f"no process runs it; {resume}"
    beat = f"last heartbeat {heartbeat_age:.0f} s ago" if heartbeat_age is not None else "no heartbeat yet"
    if not owner_alive:
        return STOPPED, f"owner {run.owner} gone, {beat}; {resume}"
    if heartbeat_age is None or heartbeat_age >= stale_after:
        return UNRESPONSIVE, (f"owner {run.owner} is silent, {beat}: stopped (a suspended process or laptop), "
                              f"or on another machine that died; if it is gone, {resume}")
    return ACTIVE, f"{run.owner}, heartbeat {heartbeat_age:.0f} s ago"


class RunView:
    """Receives archive events; prints them as lines, or keeps a live panel on a terminal."""

    def __init__(self, run_name: str, live: bool | None = None, stream=None):
        self.run_name = run_name
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream)
        self.live_enabled = self.console.is_terminal if live is None else live
        self.recent: deque[str] = deque(maxlen=12)
        self.header: Callable[[], str] = lambda: ""
        self.slots: dict[str, tuple[str, float]] = {}   # slot -> (what runs there, since when: time.monotonic)
        self._live: Live | None = None

    def line(self, message: str, at: datetime | None = None) -> None:
        stamp = (at or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S")
        text = f"{stamp} [{self.run_name}] {message}"
        if self._live is not None:
            self.recent.append(text)
        else:
            print(text, file=self.stream, flush=True)

    def on_event(self, event: Event) -> None:
        self.line(f"{event.kind}: {event.message}", event.at)

    def _render(self) -> Group:
        table = Table(title=None, expand=False, show_edge=False)
        table.add_column("slot")
        table.add_column("for", justify="right")
        table.add_column("running")
        now = time.monotonic()
        for slot, (what, since) in sorted(self.slots.items()):
            table.add_row(escape(slot), fmt.duration(now - since), escape(what))
        return Group(Text(self.header(), style="bold"), table, Text("\n".join(self.recent), style="dim"))

    def __enter__(self) -> "RunView":
        if self.live_enabled:
            self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
