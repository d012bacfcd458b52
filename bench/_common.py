"""Helpers shared by the benchmark scripts: machine facts, plain tables, percentiles."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # scripts run as `python bench/x.py` import tests.support
SURROGATE = ROOT / "tests" / "fixtures" / "surrogate"
PREPARE = ROOT / "prepare.py"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header(title: str) -> None:
    """The command line and the machine, so a pasted table says where it came from."""
    print(f"# {title}")
    print(f"command: python3 {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"machine: nproc={os.cpu_count()}, cpu={cpu_model()!r}, python={platform.python_version()}, "
          f"{platform.system()} {platform.release()}")
    try:
        print("load average at start (1/5/15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    except OSError:
        pass
    try:
        import torch
        print(f"torch: {torch.__version__}")
    except ImportError:
        pass
    print()


def table(headers: list[str], rows: list[list], title: str | None = None) -> None:
    """A plain, fixed-width, pipe-separated table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(title)
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))
    print()


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "mean": statistics.fmean(values), "p50": percentile(values, 50),
            "p95": percentile(values, 95), "max": max(values)}


def prepare_preset(cache: Path, preset: str, text: str | None) -> None:
    """The repository's prepare.py makes `preset`'s data in `cache` (smoke has its own corpus)."""
    args = [sys.executable, str(PREPARE), "--preset", preset] + (["--text", text] if text and preset != "smoke" else [])
    subprocess.run(args, check=True, env={**os.environ, "EVO_CACHE_DIR": str(cache)}, capture_output=True)
