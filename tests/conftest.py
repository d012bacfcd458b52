"""Shared fixtures: a prepared smoke cache, and prepare.py imported under a chosen preset."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREPARE = ROOT / "prepare.py"
SEED_TRAIN = ROOT / "seed_train.py"

T = TypeVar("T")


def wait_until(probe: Callable[[], T], what: str, timeout: float = 180.0, every: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy, and return that. Tests wait on state (the
    archive, a file, a process), never on fixed sleeps: a loaded 2-core box can be 10x slower.
    Exceptions of the probe count as "not yet" (an archive that does not exist yet, a locked file)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except Exception:  # noqa: BLE001 - not ready yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def seed_train_code(preset: str) -> str:
    """seed_train.py as a run on `preset` starts from it: the preset's model and batch size written in."""
    from evo.launch.apparatus import seed_for

    return seed_for(PREPARE, preset, SEED_TRAIN.read_text(), str(SEED_TRAIN))


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


@pytest.fixture(scope="module")
def server():
    """The fake LLM server (tests/llm_server.py), shared by one module's tests."""
    from llm_server import FakeLLMServer
    with FakeLLMServer() as s:
        yield s
