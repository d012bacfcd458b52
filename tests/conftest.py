"""Shared fixtures: a prepared smoke cache, and prepare.py imported under a chosen preset."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREPARE = ROOT / "prepare.py"
SEED_TRAIN = ROOT / "seed_train.py"


def run_prepare(cache: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run prepare.py as a user would, with its own cache folder."""
    full_env = {**os.environ, "EVO_CACHE_DIR": str(cache), **(env or {})}
    full_env.pop("EVO_PRESET", None)
    return subprocess.run([sys.executable, str(PREPARE), *args], env=full_env, capture_output=True, text=True, timeout=timeout)


def load_prepare(cache: Path, preset: str, monkeypatch: pytest.MonkeyPatch):
    """Import a fresh copy of prepare.py whose constants follow `preset` and `cache`."""
    monkeypatch.setenv("EVO_CACHE_DIR", str(cache))
    monkeypatch.setenv("EVO_PRESET", preset)
    spec = importlib.util.spec_from_file_location(f"prepare_{preset}_{id(cache)}", PREPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("evo-cache")
    result = run_prepare(cache, "--preset", "smoke")
    assert result.returncode == 0, result.stderr
    return cache


@pytest.fixture
def smoke(smoke_cache: Path, monkeypatch: pytest.MonkeyPatch):
    return load_prepare(smoke_cache, "smoke", monkeypatch)
