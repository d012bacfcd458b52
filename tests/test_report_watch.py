"""`evo report --watch`: a real `evo run` writes while the watcher serves its report; the pages it
serves follow the run, the page in a real headless Chromium reloads itself and keeps the reader's
place, Ctrl-C stops the server cleanly, and a port in use is one sentence."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from evo.storage import Archive, ArchiveError
from test_engine import slow_surrogate
from test_report import SURROGATE, Chromium, chromium_binary, embedded

pytestmark = pytest.mark.slow


def start_run(tmp_path: Path, url: str, candidates: int, seconds: float) -> subprocess.Popen:
    """A run of `candidates` children, each training `seconds` (a run that writes for a while
    however fast the machine)."""
    seed = slow_surrogate(tmp_path, seconds)
    proc = subprocess.Popen([sys.executable, "-m", "evo", "run", "--prepare", str(SURROGATE / "prepare.py"),
                             "--seed-train", str(seed), "--preset", "smoke", "--operator", "tweak",
                             "--name", "live", "--population", "4", "--max-candidates", str(candidates), "--slots", "2"],
                            cwd=tmp_path, env={**os.environ, "EVO_STORAGE": url}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:   # the watcher needs the run to exist
        try:
            archive = Archive(url, writer=False)
            archive.find_run("live")
            archive.close()
            return proc
        except ArchiveError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(proc.communicate()[0][-2000:])


def start_watch(tmp_path: Path, url: str, *args: str) -> tuple[subprocess.Popen, str]:
    """`evo report --watch` on any free port; returns it and its address, read from its first line."""
    proc = subprocess.Popen([sys.executable, "-m", "evo", "report", "--watch", "--port", "0", "--every", "0.5",
                             "--storage", url, "--out", str(tmp_path / "watched.html"), *args],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline()
    m = re.search(r"at (http://127\.0\.0\.1:\d+/)", first)
    assert m, first + (proc.communicate(timeout=30)[0] if proc.poll() is not None else "")
    return proc, m.group(1)


def get(address: str, path: str = "") -> str:
    with urllib.request.urlopen(address + path, timeout=30) as r:
        return r.read().decode("utf-8")


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=60)[0]


def test_the_watched_report_follows_a_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/evo.db"
    run = start_run(tmp_path, url, 30, 0.3)
    watch, address = start_watch(tmp_path, url)
    pages: dict[str, int] = {}   # revision -> candidates in the page served with it
    try:
        while run.poll() is None:
            revision = get(address, "revision")
            if revision not in pages:
                page = get(address)
                shown = re.search(r'<meta name="evo-revision" content="([^"]*)">', page).group(1)
                pages[shown] = embedded(page)[0]["meta"]["candidates"]
            time.sleep(0.2)
        assert run.returncode == 0, run.communicate()[0][-3000:]
        # the finished run's last page arrives within a look or two at the archive
        deadline = time.monotonic() + 60
        while embedded(get(address))[0]["meta"]["status"] != "FINISHED" and time.monotonic() < deadline:
            time.sleep(0.2)
        final = get(address)
        assert embedded(final)[0]["meta"]["status"] == "FINISHED" and embedded(final)[0]["meta"]["candidates"] == 31
        assert 'src="/plotly.js"' in final and len(get(address, "plotly.js")) > 1_000_000
        assert (tmp_path / "watched.html").read_text() == final, "the report's file is kept current too"
        with pytest.raises(urllib.error.HTTPError):
            get(address, "../evo.db")
    finally:
        run.kill() if run.poll() is None else None
        output = stop(watch)
    counts = list(pages.values())
    assert len(pages) >= 3 and counts == sorted(counts) and counts[0] < 31, pages
    assert watch.returncode == 0 and "updated: " in output and output.rstrip().endswith("stopped serving"), output
    assert "Traceback" not in output


def test_a_port_in_use_is_one_sentence(tmp_path: Path) -> None:
    from evo.storage import Archive as A
    from tests.support.synthetic import synthesize
    url = f"sqlite:///{tmp_path}/evo.db"
    synthesize(A(url), 4, name="done")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "evo", "report", "--watch", "--port", str(port), "--storage", url,
                            "--out", str(tmp_path / "r.html")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "--port" in r.stderr


@pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_chromium_reloads_the_watched_page_and_keeps_its_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/evo.db"
    run = start_run(tmp_path, url, 30, 1.0)
    watch, address = start_watch(tmp_path, url, "--every", "3")
    browser = Chromium()
    revision = 'document.querySelector(\'meta[name="evo-revision"]\').content'
    try:
        browser.open(address)
        # one expression, so it reads one document (the page may reload between two calls)
        first, place, banner = browser.js(f"""(() => {{
            document.getElementById('lineage').scrollIntoView({{block: 'start', behavior: 'instant'}});
            const b = document.querySelector('.banner');
            return [{revision}, window.scrollY, b ? b.textContent : ''];
        }})()""")
        assert place > 0 and ("reloads itself" in banner or run.poll() is not None), banner
        browser.wait(f"{revision} !== {first!r} && window.evoReady === true && Math.abs(window.scrollY - {place}) < 400",
                     timeout=240)
        assert browser.errors() == [] and browser.js("window.evoErrors") == []
        run.wait(timeout=600)
    finally:
        browser.close()
        run.kill() if run.poll() is None else None
        stop(watch)
