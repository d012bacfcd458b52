"""Real candidates against the real prepare.py on the smoke preset: our seed_train.py, a train.py
written in autoresearch's style, and a short `evo run` with torch end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from conftest import PREPARE, seed_train_code
from evo.launch.logs import EXIT_DIVERGED, parse_curve, parse_summary

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.slow


def run_candidate(tmp_path: Path, cache: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    """Run code as train.py beside a copy of prepare.py, as the runner does."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "train.py").write_text(code)
    shutil.copyfile(PREPARE, work / "prepare.py")
    full_env = {**os.environ, "EVO_CACHE_DIR": str(cache), "EVO_PRESET": "smoke", "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run([sys.executable, "train.py"], cwd=work, env=full_env, capture_output=True, text=True, timeout=300)


def test_seed_train_end_to_end_on_smoke(tmp_path: Path, smoke_cache: Path) -> None:
    result = run_candidate(tmp_path, smoke_cache, seed_train_code("smoke"), EVO_SEED="1")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = parse_summary(result.stdout)
    assert 0 < summary["val_bpb"] < 8
    assert summary["training_seconds"] <= 8 * 1.1 + 1
    assert summary["num_steps"] >= 5 and summary["depth"] >= 1
    assert summary["peak_vram_mb"] == 0.0 and summary["mfu_percent"] == 0.0  # CPU: no peak FLOPs known
    curve = parse_curve(result.stdout)
    assert len(curve) >= 5
    assert curve[-1][2] < curve[0][2], "the training loss falls"


def test_seed_train_stops_on_divergence(tmp_path: Path, smoke_cache: Path) -> None:
    code = seed_train_code("smoke")
    for name in ("MATRIX_LR", "EMBEDDING_LR", "UNEMBEDDING_LR"):
        code = code.replace(f"\n{name} = ", f"\n{name} = 1e6 * ", 1)
    result = run_candidate(tmp_path, smoke_cache, code)
    assert result.returncode == EXIT_DIVERGED, result.stdout[-1000:] + result.stderr[-1000:]


def test_autoresearch_style_train_runs_against_our_prepare(tmp_path: Path, smoke_cache: Path) -> None:
    result = run_candidate(tmp_path, smoke_cache, (FIXTURES / "autoresearch_style_train.py").read_text())
    assert result.returncode == 0, result.stderr[-2000:]
    summary = parse_summary(result.stdout)
    assert 0 < summary["val_bpb"] < 8
    assert parse_curve(result.stdout, time_budget=8)  # autoresearch's `remaining:` lines give a curve too


def test_evo_run_smoke_with_tweak_end_to_end(tmp_path: Path, smoke_cache: Path) -> None:
    env = {**os.environ, "EVO_CACHE_DIR": str(smoke_cache), "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db",
           "CUDA_VISIBLE_DEVICES": ""}
    root = PREPARE.parent
    cmd = [sys.executable, "-m", "evo", "run", "--preset", "smoke", "--operator", "tweak", "--max-candidates", "2",
           "--replicates", "2", "--name", "e2e", "--prepare", str(root / "prepare.py"),
           "--seed-train", str(root / "seed_train.py")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "noise σ" in result.stdout
    cands = subprocess.run([sys.executable, "-m", "evo", "candidates", "-f", "tsv"], cwd=tmp_path, env=env,
                           capture_output=True, text=True).stdout.splitlines()
    assert len(cands) == 1 + 3
    best = subprocess.run([sys.executable, "-m", "evo", "best"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert best.returncode == 0 and "path from the seed" in best.stdout
    show = subprocess.run([sys.executable, "-m", "evo", "show", "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert show.returncode == 0 and "--- #0" in show.stdout and "log tail" in show.stdout
    # The busy figure: the harness's clock saw every evaluation train, and the run's slot time holds them all.
    rows = json.loads(subprocess.run([sys.executable, "-m", "evo", "candidates", "-f", "json"], cwd=tmp_path, env=env,
                                     capture_output=True, text=True).stdout)
    evaluations = [e for row in rows for e in row["evaluations"] if e["state"] == "COMPLETE"]
    assert len(evaluations) >= 3
    for e in evaluations:
        assert e["startup_seconds"] > 0 and e["trained_seconds"] > 0
        started, training, finished = (datetime.fromisoformat(e[k]) for k in ("started_at", "training_start",
                                                                               "finished_at"))
        assert started < training < finished
    status = subprocess.run([sys.executable, "-m", "evo", "status"], cwd=tmp_path, env=env, capture_output=True,
                            text=True).stdout
    share = int(re.search(r"busy training (\d+) % of slot time", status).group(1))
    assert 0 < share <= 100
