"""Start-up cost of the candidate sandbox: `python -c pass` with and without bubblewrap.

Each run is a fresh process, timed from spawn to exit by the harness's clock; the sandboxed run is
the command evo.launch.sandbox.wrap builds for an evaluation (namespaces, a fresh /proc, tmpfs
HOME and /tmp, the validation file and the archive folder hidden, the workdir bound back).
Runs alternate between the two so load drift hits both alike.

    python3 bench/sandbox_startup.py           # 20 runs each
    python3 bench/sandbox_startup.py -n 50
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import header, summary, table

from evo.launch.sandbox import Sandbox, harness_paths, hidden_validation, probe, wrap


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="runs of each command")
    args = parser.parse_args()
    header("sandbox start-up cost")
    why = probe()
    if why is not None:
        print(f"no sandbox here: {why}.", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="evo-bench-", dir="/var/tmp")).resolve()
    try:
        home, archive = root / "home", root / "archive"
        cache, workdir = home / ".cache/evo/smoke", archive / "files/runs/bench/c00001/r0"
        for d in (cache / "data", workdir):
            d.mkdir(parents=True)
        (cache / "manifest.json").write_text(json.dumps({"train": ["shard_00000.parquet"], "val": "val.parquet"}))
        (cache / "data/val.parquet").write_text("")
        sandbox = Sandbox.build(workdir, hidden=[*hidden_validation(cache / "manifest.json"), archive],
                                readonly=[*harness_paths(), cache], gpu=False)
        plain = [sys.executable, "-c", "pass"]
        commands = {"python -c pass": plain, "bwrap + python -c pass": wrap(plain, sandbox, home)}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.n):
            for name, argv in commands.items():
                times[name].append(timed(argv))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for name, ts in times.items():
        stats = summary([t * 1000 for t in ts])
        rows.append([name, stats["n"], *(f"{stats[k]:.1f}" for k in ("p50", "mean", "p95", "max"))])
    table(["command", "runs", "p50 ms", "mean ms", "p95 ms", "max ms"], rows, title="")
    base, boxed = (statistics.median(ts) for ts in times.values())
    print(f"sandbox start-up cost (difference of medians): {1000 * (boxed - base):.1f} ms per process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
