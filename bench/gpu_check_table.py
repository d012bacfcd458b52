"""The table bench/gpu_check.sh prints: the seed run's log (its in-process evaluation time), and the tweak
run's archive, as markdown.

    python bench/gpu_check_table.py WORK SEED_PRESET TWEAK_PRESET
"""

from __future__ import annotations

import re
import sqlite3
import statistics
import sys
from pathlib import Path

from evo.launch.logs import parse_summary

_PROGRESS = re.compile(r"^step (\d+) .*\| dt: (\d+)ms \| tok/sec: ([\d,]+)")
WARMUP_STEPS = 10  # seed_train.py prints each of its first 10 steps; when compiled they include compilation


def seed_figures(log: str) -> dict[str, float]:
    """tok/s and compile seconds from the progress lines, the rest from the summary block.
    Compile seconds: the first WARMUP_STEPS steps' time beyond as many steady steps."""
    steps = [(int(m[1]), int(m[2]) / 1000, int(m[3].replace(",", ""))) for m in map(_PROGRESS.match, log.splitlines()) if m]
    warm = [dt for step, dt, _ in steps if step < WARMUP_STEPS]
    steady = [(dt, tps) for step, dt, tps in steps if step > WARMUP_STEPS]
    if not warm or not steady:
        raise SystemExit("gpu_check: the seed log has too few progress lines to measure; see seed/train.log.")
    steady_dt = statistics.median(dt for dt, _ in steady)
    summary = parse_summary(log)
    return {"tok_per_s": statistics.median(tps for _, tps in steady), "mfu_percent": summary["mfu_percent"],
            "peak_vram_mb": summary["peak_vram_mb"], "val_bpb": summary["val_bpb"],
            "compile_s": max(0.0, sum(warm) - len(warm) * steady_dt), "training_s": summary["training_seconds"],
            "total_s": summary["total_seconds"], "steps": summary["num_steps"]}


def evaluations(archive: Path) -> list[dict]:
    """Every evaluation of the tweak run, in order, read straight from the SQLite archive."""
    with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(
            "SELECT candidate_id, state, fail_reason, val_bpb, training_seconds, total_seconds, peak_vram_mb, "
            "mfu_percent, wall_seconds, harness_seconds FROM evaluation ORDER BY id")]


def _n(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(seed: dict[str, float], eval_seconds: float, evals: list[dict], seed_preset: str, tweak_preset: str) -> str:
    lines = [f"### seed_train.py, preset {seed_preset}, full budget",
             "",
             "| tok/s | MFU % | peak VRAM MiB | val_bpb | compile s | eval s | training s | total s | steps |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {seed['tok_per_s']:,.0f} | {seed['mfu_percent']:.1f} | {seed['peak_vram_mb']:,.0f} | {seed['val_bpb']:.4f} "
             f"| {seed['compile_s']:.1f} | {eval_seconds:.1f} | {seed['training_s']:.1f} | {seed['total_s']:.1f} "
             f"| {seed['steps']:.0f} |",
             "",
             f"### evo run --operator tweak --max-candidates 3, preset {tweak_preset}",
             "",
             "| candidate | state | val_bpb | MFU % | peak VRAM MiB | training s | candidate total s | wall s "
             "| harness s | wall - total s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in evals:
        outside = e["wall_seconds"] - e["total_seconds"] if e["wall_seconds"] and e["total_seconds"] else None
        state = e["state"] + (f" ({e['fail_reason']})" if e["fail_reason"] else "")
        lines.append(f"| {e['candidate_id']} | {state} | {_n(e['val_bpb'], '.4f')} | {_n(e['mfu_percent'], '.1f')} "
                     f"| {_n(e['peak_vram_mb'], ',.0f')} | {_n(e['training_seconds'], '.1f')} "
                     f"| {_n(e['total_seconds'], '.1f')} | {_n(e['wall_seconds'], '.1f')} "
                     f"| {_n(e['harness_seconds'], '.2f')} | {_n(outside, '.1f')} |")
    harness = [e["harness_seconds"] for e in evals if e["harness_seconds"] is not None]
    if harness:
        lines += ["", f"Harness overhead: {statistics.mean(harness):.2f} s per evaluation (the runner's own account); "
                      "wall - total adds the interpreter's start and imports before the candidate's clock starts."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    work, seed_preset, tweak_preset = Path(argv[0]), argv[1], argv[2]
    seed = seed_figures((work / "seed" / "train.log").read_text())
    scored = re.findall(r"evaluate_bpb: scored [0-9,]+ tokens in ([0-9.]+) s", (work / "seed" / "train.log").read_text())
    print(table(seed, float(scored[-1]), evaluations(work / "tweak" / "evo.db"), seed_preset, tweak_preset))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
