"""Apparatus benchmark: prepare + seed_train wall time on `smoke`, and on `cpu` the val_bpb the seed
reaches within its budget beside the unigram entropy of the same validation text (what a model
that learned nothing beyond token frequencies scores).

    python bench/apparatus.py                                   # smoke only (seconds)
    python bench/apparatus.py --cpu-text ../shared/data/tinyshakespeare.txt   # + cpu preset (~3 min)

Prints a table; record results in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from evo.launch.apparatus import seed_for  # noqa: E402
from evo.launch.logs import parse_summary  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - t0, result


def unigram_bpb(cache: Path, preset: str) -> tuple[float, float]:
    """(token-unigram bits per byte, byte-unigram bits per byte) of the validation text, the token
    distribution estimated on the training split (add-one smoothed)."""
    os.environ.update(EVO_CACHE_DIR=str(cache), EVO_PRESET=preset)
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_prepare", ROOT / "prepare.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    import json
    import pyarrow.parquet as pq
    manifest = json.loads(prep.MANIFEST.read_text())
    tok = prep.Tokenizer.from_directory()
    train = [t for f in manifest["train"] for t in pq.read_table(prep.DATA_DIR / f).column("text").to_pylist()]
    val = pq.read_table(prep.DATA_DIR / manifest["val"]).column("text").to_pylist()
    counts = Counter(i for ids in tok.encode(train) for i in ids)
    total, vocab = sum(counts.values()), tok.get_vocab_size()
    val_ids = [i for ids in tok.encode(val) for i in ids]
    val_bytes = sum(len(t.encode("utf-8")) for t in val)
    bits = -sum(math.log2((counts[i] + 1) / (total + vocab)) for i in val_ids)
    byte_counts = Counter(b for t in val for b in t.encode("utf-8"))
    byte_entropy = -sum(c / val_bytes * math.log2(c / val_bytes) for c in byte_counts.values())
    return bits / val_bytes, byte_entropy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--cpu-text", type=Path, help="local text for the cpu preset (skipped without it)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"command: python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache, work = Path(tmp) / "cache", Path(tmp)
        env = {**os.environ, "EVO_CACHE_DIR": str(cache), "CUDA_VISIBLE_DEVICES": ""}
        presets = [("smoke", [])] + ([("cpu", ["--text", str(args.cpu_text.resolve())])] if args.cpu_text else [])
        for preset, extra in presets:
            penv = {**env, "EVO_PRESET": preset}
            t_prep, _ = timed([sys.executable, str(ROOT / "prepare.py"), "--preset", preset, *extra], penv, work)
            # the seed as a run on this preset starts from it, beside prepare.py as the runner places it
            seed = work / preset
            seed.mkdir()
            shutil.copyfile(ROOT / "prepare.py", seed / "prepare.py")
            (seed / "train.py").write_text(seed_for(ROOT / "prepare.py", preset, (ROOT / "seed_train.py").read_text(),
                                                    str(ROOT / "seed_train.py")))
            t_train, result = timed([sys.executable, "train.py"], penv, seed)
            s = parse_summary(result.stdout)
            token_uni, byte_uni = unigram_bpb(cache, preset)
            rows.append((preset, t_prep, t_train, s, token_uni, byte_uni))
    print("| preset | prepare s | seed_train s | training s | steps | params M | val_bpb | token-unigram bpb | byte-unigram bpb |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, t_prep, t_train, s, token_uni, byte_uni in rows:
        print(f"| {preset} | {t_prep:.1f} | {t_train:.1f} | {s['training_seconds']:.1f} | {int(s['num_steps'])} | "
              f"{s['num_params_M']:.2f} | {s['val_bpb']:.4f} | {token_uni:.4f} | {byte_uni:.4f} |")


if __name__ == "__main__":
    main()
