"""What a person watching `evo run` sees: a rich live view on a terminal, one plain log line per
event when output is redirected (an overnight `nohup` log must be readable)."""

from __future__ import annotations

import sys
from collections import deque
from datetime import datetime, timezone
from typing import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from evo.archive import Event


class RunView:
    """Receives archive events; prints them as lines, or keeps a live panel on a terminal."""

    def __init__(self, run_name: str, live: bool | None = None, stream=None):
        self.run_name = run_name
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream)
        self.live_enabled = self.console.is_terminal if live is None else live
        self.recent: deque[str] = deque(maxlen=12)
        self.header: Callable[[], str] = lambda: ""
        self.slots: dict[str, str] = {}
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
        table.add_column("running")
        for slot, what in sorted(self.slots.items()):
            table.add_row(slot, what)
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
