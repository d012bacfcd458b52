"""What the two-process evaluation costs: the seed on smoke and cpu through the real runner, with
and without the sandbox.

Per evaluation: the training process (budget + start-up + hand-over), the hand-over itself (the
torch.export of the model, from prepare.py's log line), and the evaluation process (interpreter,
torch and prepare imports, loading the program, the causality check, the score). The score is
what the in-process evaluation cost before the split (the same forward passes); everything else in
the evaluation process, plus the hand-over, is the split's price.

    python3 bench/evaluation_split.py --text ../shared/data/tinyshakespeare.txt      # smoke and cpu
    python3 bench/evaluation_split.py --presets smoke -n 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PREPARE, ROOT, header, prepare_preset, table

from evo.launch import apparatus, runner
from evo.launch.runner import Confinement, Limits, Slot, file_hash, run_evaluation
from evo.launch.sandbox import probe

_HAND_OVER = re.compile(r"handed the model to the harness in ([0-9.]+) s")
# The same program scored the way `python train.py` scores by hand: prepare.evaluate_bpb in-process.
_BY_HAND = ("import sys, torch, prepare; m = torch.export.load(sys.argv[1]).module(); "
            "print(prepare.evaluate_bpb(m, prepare.Tokenizer.from_directory(), prepare.EVAL_BATCH_SIZE))")


def measure(preset: str, cache: Path, work: Path, sandboxed: bool, seed: int) -> dict:
    app = apparatus.load(PREPARE, preset)
    code = apparatus.seed_for(PREPARE, preset, (ROOT / "seed_train.py").read_text(), "seed_train.py")
    scored: list[float] = []
    score = runner._Scorer.score

    def timed_score(*args, **kwargs):  # the evaluation process's wall after the go, by the harness's clock
        t0 = time.perf_counter()
        try:
            return score(*args, **kwargs)
        finally:
            scored.append(time.perf_counter() - t0)

    runner._Scorer.score = timed_score
    try:
        startup, evaluation = app.allowances
        workdir = work / f"{preset}-{'box' if sandboxed else 'plain'}-{seed}" / "r0"
        confine = Confinement(work, cache / preset / "manifest.json") if sandboxed else None
        result = run_evaluation(code=code, workdir=workdir, prepare_src=PREPARE, locked_hash=file_hash(PREPARE),
                                slot=Slot("cpu", {"CUDA_VISIBLE_DEVICES": "", "EVO_CACHE_DIR": str(cache)}),
                                seed=seed, limits=Limits(app.time_budget, startup, evaluation), preset=preset,
                                confine=confine)
    finally:
        runner._Scorer.score = score
    if result.outcome.state != "COMPLETE":
        raise SystemExit(f"{preset}: the seed did not complete: {result.outcome.fail_reason}: {result.outcome.detail}")
    verdict = json.loads((workdir.with_name(workdir.name + runner.HARNESS_SUFFIX) / "evaluate.log").read_text()
                         .splitlines()[-1])
    hand_over = float(_HAND_OVER.search((workdir / "run.log").read_text()).group(1))
    by_hand = subprocess.run([sys.executable, "-c", _BY_HAND, str(workdir.with_name(workdir.name + runner.HARNESS_SUFFIX)
                                                                  / runner.HAND_OVER)],
                             cwd=ROOT, env={**os.environ, "EVO_CACHE_DIR": str(cache), "EVO_PRESET": preset},
                             capture_output=True, text=True, check=True)
    inside = verdict["seconds"]
    return {"training process": result.wall_seconds - result.harness_seconds, "hand-over": hand_over,
            "evaluation process": scored[0], "of which score": inside - verdict["check_seconds"],
            "split cost": hand_over + scored[0] - (inside - verdict["check_seconds"]),
            "val_bpb": result.outcome.summary["val_bpb"],
            "|harness - by hand|": abs(result.outcome.summary["val_bpb"] - float(by_hand.stdout.split()[-1]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="smoke,cpu")
    parser.add_argument("--text", help="corpus for the cpu preset (no network here), e.g. tinyshakespeare.txt")
    parser.add_argument("-n", type=int, default=3, help="evaluations per preset and mode")
    args = parser.parse_args()
    header("cost of the two-process evaluation (hand-over + evaluation process) per evaluation")
    why = probe()
    modes = [False] + ([] if why else [True])
    if why:
        print(f"sandbox unavailable ({why}); measuring unsandboxed only\n")
    rows = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        cache, work = Path(tmp) / "cache", Path(tmp) / "work"
        for preset in args.presets.split(","):
            prepare_preset(cache, preset, args.text)
            for sandboxed in modes:
                runs = [measure(preset, cache, work, sandboxed, 42 + i) for i in range(args.n)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                budget = apparatus.load(PREPARE, preset).time_budget
                rows.append([preset, "sandbox" if sandboxed else "plain", args.n, f"{budget:.0f}",
                             *(f"{med[k]:.2f}" for k in ("training process", "hand-over", "evaluation process",
                                                         "of which score", "split cost")),
                             f"{100 * med['split cost'] / (budget + med['split cost']):.1f}%",
                             f"{med['val_bpb']:.4f}", f"{max(r['|harness - by hand|'] for r in runs):.1e}"])
    table(["preset", "mode", "n", "budget s", "training process s", "hand-over s", "evaluation process s",
           "of which score s", "split cost s", "split / (budget + split)", "val_bpb", "max abs(harness - by hand)"], rows,
          "medians over n evaluations of the seed (CPU slot)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
