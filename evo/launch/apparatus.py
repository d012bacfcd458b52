"""The locked apparatus seen from the harness: prepare.py's constants for a preset, read from its
source without executing it (that would import torch into the harness), its hash, preparing a
preset's data when it is missing, and the seed written with a preset's sizes."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# The file whose size constants follow the preset (PRESETS[preset]["seed_train"]); any other seed
# file is the user's own and runs as written.
SEED_TRAIN_NAME = "seed_train.py"
_REQUIRED = ("time_budget", "startup_allowance", "eval_allowance", "seed_train")


class ApparatusError(Exception):
    """prepare.py is missing, unreadable, or preparing failed: one sentence."""


@dataclass(frozen=True)
class Apparatus:
    prepare_path: Path
    preset: str
    locked_hash: str
    time_budget: float
    manifest: Path | None          # None: an apparatus without a data cache has nothing to prepare
    allowances: tuple[float, float]  # default (startup, evaluation) seconds beyond the budget
    seed_sizes: dict[str, object]    # written into seed_train.py


def literal_constants(source: str, where: str) -> dict[str, object]:
    """prepare.py's top-level `NAME = <literal>` assignments. PRESETS must be one of them: a
    PRESETS that is not a literal is an error, any other non-literal is simply not read."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ApparatusError(f"{where} is not valid Python ({e.msg}, line {e.lineno}).") from None
    found: dict[str, object] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
        if not isinstance(target, ast.Name):
            continue
        try:
            found[target.id] = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            if target.id == "PRESETS":
                raise ApparatusError(f"PRESETS in {where} must be a plain literal (numbers and strings, no names or "
                                     "arithmetic) so the harness can read it without running prepare.py.") from None
            found.pop(target.id, None)  # reassigned to something computed: no longer known
    return found


def load(prepare_path: Path, preset: str) -> Apparatus:
    """The preset's constants, read from prepare.py's PRESETS literal."""
    try:
        source = prepare_path.read_bytes()
    except OSError:
        raise ApparatusError(f"no prepare.py at {prepare_path}; run evo from the project folder.") from None
    constants = literal_constants(source.decode("utf-8", errors="replace"), str(prepare_path))
    presets = constants.get("PRESETS")
    if not isinstance(presets, dict) or not all(isinstance(p, dict) for p in presets.values()):
        raise ApparatusError(f"{prepare_path} defines no PRESETS literal mapping each preset name to its settings.")
    if preset not in presets:
        raise ApparatusError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}.")
    settings = presets[preset]
    missing = [key for key in _REQUIRED if key not in settings]
    if missing:
        raise ApparatusError(f"PRESETS[{preset!r}] in {prepare_path} has no {', '.join(map(repr, missing))}.")
    manifest = None
    if "CACHE_ENV" in constants:
        root = Path(os.environ.get(constants["CACHE_ENV"], constants["DEFAULT_CACHE_ROOT"])).expanduser()
        manifest = root / preset / constants["MANIFEST_NAME"]
    return Apparatus(prepare_path.resolve(), preset, hashlib.sha256(source).hexdigest(), float(settings["time_budget"]),
                     manifest, (float(settings["startup_allowance"]), float(settings["eval_allowance"])),
                     dict(settings["seed_train"]))


def render_seed(code: str, sizes: dict[str, object]) -> str:
    """`code` with the value of each top-level `NAME = ...` assignment of `sizes` replaced by the
    plain literal of its number: the seed a run starts from reads `DEPTH = 8`, never a lookup."""
    tree = ast.parse(code)
    offsets = [0]
    for line in code.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    spans: dict[str, tuple[int, int]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            spans[node.targets[0].id] = (offsets[value.lineno - 1] + value.col_offset,
                                         offsets[value.end_lineno - 1] + value.end_col_offset)
    missing = [name for name in sizes if name not in spans]
    if missing:
        raise ValueError(f"the seed has no top-level assignment of {', '.join(missing)} to write the preset's size into.")
    for name in sorted(sizes, key=lambda n: spans[n][0], reverse=True):  # from the end: offsets stay valid
        start, end = spans[name]
        value = sizes[name]  # strings in double quotes, as the seed writes them
        code = code[:start] + (json.dumps(value) if isinstance(value, str) else repr(value)) + code[end:]
    return code


def seed_for(prepare_path: Path, preset: str, code: str, path: str) -> str:
    """The seed a run on `preset` starts from: seed_train.py with the preset's sizes written in,
    any other seed file as it is."""
    if Path(path).name != SEED_TRAIN_NAME:
        return code
    try:
        return render_seed(code, load(prepare_path, preset).seed_sizes)
    except ValueError as e:
        raise ApparatusError(f"{path}: {e}") from None


def locked_state(app: Apparatus) -> dict[str, str]:
    """What a run's scores depend on besides the candidate: prepare.py's hash and the prepared data's
    (its manifest's) hash. Stored with the run; a resume under another apparatus is refused."""
    data = hashlib.sha256(app.manifest.read_bytes()).hexdigest() if app.manifest is not None else ""
    return {"prepare": app.locked_hash, "data": data}


def locked_mismatch(stored: dict[str, str], now: dict[str, str], run: str, preset: str) -> str | None:
    """The sentence refusing to resume `run` under an apparatus other than the one it started with."""
    if stored.get("prepare", now["prepare"]) != now["prepare"]:
        return (f"prepare.py changed since run {run!r} started (sha256 {stored['prepare'][:12]}, now "
                f"{now['prepare'][:12]}): its candidates would not compare with the new ones; restore that "
                f"prepare.py, or start a new run.")
    if stored.get("data", now["data"]) != now["data"]:
        return (f"the prepared data of preset {preset!r} changed since run {run!r} started (manifest sha256 "
                f"{stored['data'][:12]}, now {now['data'][:12]}): prepare it again from the same source, or start "
                f"a new run.")
    return None


def ensure_prepared(app: Apparatus, say: Callable[[str], None]) -> None:
    """Run prepare.py for the preset when its data is missing, so one command starts a run."""
    if app.manifest is None or app.manifest.exists():
        return
    say(f"preset {app.preset!r} is not prepared; running `python prepare.py --preset {app.preset}`")
    result = subprocess.run([sys.executable, str(app.prepare_path), "--preset", app.preset],
                            env={**os.environ, "EVO_PRESET": app.preset}, capture_output=True, text=True)
    for line in result.stdout.splitlines():
        say(f"prepare: {line}")
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        # prepare.py's offline advice names its own --text flag, which `evo run` does not have.
        offline = (f" To prepare from local text instead: `python {app.prepare_path} --preset {app.preset} --text FILE "
                   "[FILE ...]`, then start the run again." if "--text" in last else "")
        raise ApparatusError(f"preparing preset {app.preset!r} failed: {last}{offline}")
