"""Compile cache: what a child pays for torch.compile when it starts from its parent's kernels.

Four real evaluations of the repository's seed_train.py on a preset (default smoke), compiled
(EVO_COMPILE=1, the path CUDA takes; on CPU Inductor writes C++ kernels), each with the harness's
runner as `evo run` uses it (unsandboxed here: the sandbox changes nothing Inductor does):

    parent                        cold: an empty cache
    child, hyperparameter only    MATRIX_LR x1.25: cold, then from a copy of the parent's cache
    child, a changed model        DEPTH - 1, from a copy of the parent's cache (must compile again)

For each: the first step's time (the compilation: seed_train's step 0 includes it), the
evaluation's wall time, and the cache's size on disk.

    python3 bench/compile_cache.py                  # smoke preset, this machine
    python3 bench/compile_cache.py --preset cpu --text ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from _common import PREPARE, ROOT, header, prepare_preset, table

from evo.launch import apparatus
from evo.launch.runner import COMPILE_CACHE, Limits, Slot, file_hash, run_evaluation

_STEP0 = re.compile(r"^step 00000 .*\| dt: (\d+)ms", re.M)


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def evaluate(code: str, workdir: Path, cache: Path, preset: str, source: Path | None) -> dict:
    app = apparatus.load(PREPARE, preset)
    startup, evaluation = app.allowances
    result = run_evaluation(code=code, workdir=workdir, prepare_src=PREPARE, locked_hash=file_hash(PREPARE),
                            slot=Slot("cpu", {"CUDA_VISIBLE_DEVICES": "", "EVO_CACHE_DIR": str(cache), "EVO_COMPILE": "1"}),
                            seed=42, limits=Limits(app.time_budget, startup * 20, evaluation), preset=preset,
                            compile_cache=source)
    if result.outcome.state != "COMPLETE":
        raise SystemExit(f"did not complete: {result.outcome.fail_reason}: {result.outcome.detail}\n{result.log_tail[-2000:]}")
    step0 = _STEP0.search((workdir / "run.log").read_text())
    return {"first step (compile)": int(step0.group(1)) / 1000 if step0 else float("nan"),
            "evaluation wall": result.wall_seconds, "cache": size_of(workdir / COMPILE_CACHE) / 1e6,
            "val_bpb": result.outcome.summary["val_bpb"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--text", default=None, help="local text for presets other than smoke")
    args = ap.parse_args()
    header("Compile cache: torch.compile seconds of a child that starts from its parent's kernels")
    with tempfile.TemporaryDirectory(prefix="evo-compile-bench-") as tmp:
        work, cache = Path(tmp) / "runs", Path(tmp) / "cache"
        prepare_preset(cache, args.preset, args.text)
        parent = apparatus.seed_for(PREPARE, args.preset, (ROOT / "seed_train.py").read_text(), "seed_train.py")
        lr = re.sub(r"(?m)^(MATRIX_LR = )([0-9.]+)", lambda m: f"{m.group(1)}{float(m.group(2)) * 1.25:g}", parent, count=1)
        deeper = re.sub(r"(?m)^(DEPTH = )(\d+)", lambda m: f"{m.group(1)}{max(1, int(m.group(2)) - 1)}", parent, count=1)
        assert lr != parent and deeper != parent
        rows = []
        first = evaluate(parent, work / "parent" / "r0", cache, args.preset, None)
        source = work / "parent" / "r0" / COMPILE_CACHE
        for name, code, start in (("parent", None, None), ("child, hyperparameter only, cold", lr, None),
                                  ("child, hyperparameter only, parent's cache", lr, source),
                                  ("child, a changed model, parent's cache", deeper, source)):
            m = first if code is None else evaluate(code, work / name.replace(" ", "_").replace(",", "").replace("'", "")
                                                    / "r0", cache, args.preset, start)
            rows.append([name, f"{m['first step (compile)']:.1f} s", f"{m['evaluation wall']:.1f} s",
                         f"{m['cache']:.1f} MB", f"{m['val_bpb']:.6f}"])
        table(["evaluation", "first step (compile)", "evaluation wall", "its cache", "val_bpb"], rows,
              title=f"preset {args.preset}, torch.compile on CPU (EVO_COMPILE=1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
