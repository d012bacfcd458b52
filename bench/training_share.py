"""Training share of slot time in a real `evo run`, and the start-up gap between candidates.

A real run (repository prepare.py and seed_train.py, tweak operator, sandbox as the machine allows)
on a preset's data; afterwards, from what a user reads:
- busy: `evo status`'s figure, Σ training seconds (harness clock) / (slots × active time);
- per evaluation (`evo candidates -f json`): start-up (dispatch to the training clock's start),
  training seconds, and the rest of the evaluation (hand-over, the evaluation process, the score);
- the gap: on each slot, from one evaluation's training end to the next one's training start (what
  hiding start-up would shrink).

    python3 bench/training_share.py                                 # smoke, 6 candidates, 1 slot
    python3 bench/training_share.py --presets smoke cpu --text ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from _common import PREPARE, ROOT, header, percentile, prepare_preset, table


def evo(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "evo", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"evo {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def gaps(evaluations: list[dict]) -> list[float]:
    """Seconds from one evaluation's training end to the next training start on the same slot."""
    by_slot: dict[str, list[tuple[datetime, datetime]]] = {}
    for e in evaluations:
        start = datetime.fromisoformat(e["training_start"])
        by_slot.setdefault(e["slot"], []).append((start, start + timedelta(seconds=e["trained_seconds"])))
    out = []
    for spans in by_slot.values():
        spans.sort()
        out += [(b[0] - a[1]).total_seconds() for a, b in zip(spans, spans[1:])]
    return out


def p50(xs: list[float]) -> str:
    return f"{percentile(xs, 50):.1f} s" if xs else "-"


def measure(preset: str, cache: Path, work: Path, candidates: int, slots: int) -> list:
    env = {**os.environ, "EVO_CACHE_DIR": str(cache), "EVO_STORAGE": f"sqlite:///{work}/evo.db",
           "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    evo(["run", "--name", preset, "--preset", preset, "--operator", "tweak", "--max-candidates", str(candidates),
         "--slots", str(slots), "--prepare", str(PREPARE), "--seed-train", str(ROOT / "seed_train.py")], work, env)
    status = evo(["status", "--name", preset], work, env)
    busy = re.search(r"busy training (\d+) % of slot time", status)
    rows = json.loads(evo(["candidates", "--name", preset, "-f", "json"], work, env))
    done = [e for row in rows for e in row["evaluations"] if e["state"] == "COMPLETE" and e["trained_seconds"]]
    startup = [e["startup_seconds"] for e in done]
    trained = [e["trained_seconds"] for e in done]
    rest = [e["wall_seconds"] - e["startup_seconds"] - e["trained_seconds"] for e in done]
    gap = gaps(done)
    return [preset, slots, len(done), busy.group(1) + " %" if busy else "-", p50(startup), p50(trained), p50(rest),
            p50(gap), f"{max(gap):.1f} s" if gap else "-"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["smoke"])
    ap.add_argument("--candidates", type=int, default=6, help="children per run (--max-candidates)")
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--text", help="corpus for the presets other than smoke (prepare.py --text)")
    args = ap.parse_args()
    header("training share of slot time in a real evo run")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            cache, work = Path(tmp) / preset / "cache", Path(tmp) / preset / "work"
            work.mkdir(parents=True)
            prepare_preset(cache, preset, args.text)
            rows.append(measure(preset, cache, work, args.candidates, args.slots))
    table(["preset", "slots", "evaluations", "busy", "start-up p50", "training p50", "after training p50",
           "gap p50", "gap max"], rows)


if __name__ == "__main__":
    main()
