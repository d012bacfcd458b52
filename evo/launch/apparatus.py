"""The locked apparatus seen from the harness: prepare.py's constants for a preset, its hash, and
preparing a preset's data when it is missing."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class ApparatusError(Exception):
    """prepare.py is missing or preparing failed: one sentence."""


@dataclass(frozen=True)
class Apparatus:
    prepare_path: Path
    preset: str
    locked_hash: str
    time_budget: float
    manifest: Path


def load(prepare_path: Path, preset: str) -> Apparatus:
    """Read the preset's constants by importing prepare.py under EVO_PRESET=preset."""
    if not prepare_path.is_file():
        raise ApparatusError(f"no prepare.py at {prepare_path}; run evo from the project folder.")
    saved = os.environ.get("EVO_PRESET")
    os.environ["EVO_PRESET"] = preset
    try:
        spec = importlib.util.spec_from_file_location(f"_evo_prepare_{preset}", prepare_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            os.environ.pop("EVO_PRESET", None)
        else:
            os.environ["EVO_PRESET"] = saved
    return Apparatus(prepare_path.resolve(), preset, hashlib.sha256(prepare_path.read_bytes()).hexdigest(),
                     float(module.TIME_BUDGET), Path(module.MANIFEST))


def ensure_prepared(app: Apparatus, say: Callable[[str], None]) -> None:
    """Run prepare.py for the preset when its data is missing, so one command starts a run."""
    if app.manifest.exists():
        return
    say(f"preset {app.preset!r} is not prepared; running `python prepare.py --preset {app.preset}`")
    result = subprocess.run([sys.executable, str(app.prepare_path), "--preset", app.preset],
                            env={**os.environ, "EVO_PRESET": app.preset}, capture_output=True, text=True)
    for line in result.stdout.splitlines():
        say(f"prepare: {line}")
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ApparatusError(f"preparing preset {app.preset!r} failed: {last}")
