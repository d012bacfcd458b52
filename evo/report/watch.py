"""`evo report --watch`: the report of a run, served on this machine and kept current while the
run writes. Only the standard library's HTTP server: nothing to install, nothing listening beyond
loopback unless asked.

The main thread asks the archive for its revision (`Archive.revision`: one cheap read) every
`every` seconds and, when it changed, builds the report again (in a read transaction: the run is
never blocked), writes it to the report's file too, and swaps it in. Server threads answer
`/` with the newest page, `/revision` with its revision (the page polls it and reloads itself
when it differs) and `/plotly.js` once per browser, so a reload moves a few hundred kilobytes,
not plotly's megabytes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from evo.report import ReportError, build_report, save
from evo.report.html import SERVED_PLOTLY, plotly_js
from evo.storage import ACTIVE, Archive, ArchiveError

DEFAULT_PORT = 8765
DEFAULT_EVERY = 5.0   # seconds between two looks at the archive


@dataclass
class Page:
    html: bytes
    revision: str


class Watch:
    """The newest report of one run, rebuilt when the archive's revision changes."""

    def __init__(self, archive: Archive, run_name: str | None, out: Path | None, every: float):
        self.archive, self.out, self.every = archive, out, every
        self.run = archive.find_run(run_name)   # fixed once: a newer run started meanwhile is not this one
        self.page: Page | None = None
        self.path: Path | None = None

    def refresh(self) -> bool:
        """Build the page again if the archive changed since the last build; True if it did."""
        revision = self.archive.revision(self.run.id)
        if self.page is not None and revision == self.page.revision:
            return False
        built = build_report(self.archive, self.run.name, watch=self.every)
        self.path = save(built, self.out)
        self.page = Page(built.html.encode("utf-8"), built.revision or revision)
        return True

    def ended(self) -> bool:
        return self.archive.run_by_id(self.run.id).status != ACTIVE


def _handler(watch: Watch) -> type[BaseHTTPRequestHandler]:
    plotly = plotly_js().encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            route = self.path.split("?", 1)[0]
            page = watch.page
            if route in ("/", "/index.html") and page is not None:
                self._send(200, "text/html; charset=utf-8", page.html)
            elif route == "/revision" and page is not None:
                self._send(200, "text/plain; charset=utf-8", page.revision.encode("utf-8"))
            elif route == "/favicon.ico":
                self._send(204, "image/x-icon", b"")
            elif route == SERVED_PLOTLY:
                self._send(200, "text/javascript; charset=utf-8", plotly, cache="public, max-age=86400")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, code: int, kind: str, body: bytes, cache: str = "no-store") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass   # the browser went away mid-page (a reload): nothing to do

        def log_message(self, *args) -> None:
            pass   # one line per request would drown the updates

    return Handler


def serve(archive: Archive, run_name: str | None, out: Path | None, *, host: str = "127.0.0.1",
          port: int = DEFAULT_PORT, every: float = DEFAULT_EVERY, say: Callable[[str], None] = print,
          stop: threading.Event | None = None) -> None:
    """Serve the run's report at http://host:port/ until `stop` is set (or KeyboardInterrupt).
    Raises ArchiveError (one sentence) for an unknown run, an unwritable `out` or a port in use."""
    watch = Watch(archive, run_name, out, every)
    watch.refresh()
    try:
        server = ThreadingHTTPServer((host, port), _handler(watch))
    except OSError as e:
        raise ReportError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another with --port.") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="evo-report-server", daemon=True)
    thread.start()
    bound = server.server_address[1]
    say(f"serving the report of run {watch.run.name} at http://{host}:{bound}/ (also written to {watch.path}); "
        f"it follows the run every {every:g} s; Ctrl-C stops")
    stop = stop or threading.Event()
    ended = watch.ended()
    if ended:
        say(f"run {watch.run.name} is not running: the page will not change until it is resumed")
    try:
        while not stop.wait(every):
            try:
                if watch.refresh():
                    say(f"updated: {archive.tally(watch.run.id).children_line()}")
            except ReportError:   # the report's file cannot be written: the user must fix that
                raise
            except ArchiveError as e:   # the archive busy or moved away: keep the last page, try again
                say(f"could not read the archive ({e}); showing the last page")
            now_ended = watch.ended()
            if now_ended and not ended:
                say(f"run {watch.run.name} ended; the page stays up until Ctrl-C")
            ended = now_ended
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    say("stopped serving")

