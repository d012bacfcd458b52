"""A preset is defined once, in prepare.py's PRESETS literal; the harness reads it without executing
prepare.py (no torch), and the seed a run starts from has the preset's sizes as plain numbers
(issue 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evo.config import RunConfig
from evo.launch import apparatus
from evo.launch.apparatus import ApparatusError, literal_constants, load, render_seed, seed_for
from evo.operators.tweak import find_constants

from conftest import PREPARE, SEED_TRAIN, load_prepare

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = ROOT / "tests" / "fixtures" / "surrogate"
SIZE_NAMES = ("DEPTH", "ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE")


def _presets() -> dict:
    return literal_constants(PREPARE.read_text(), "prepare.py")["PRESETS"]


# ----- one definition, read without executing prepare.py ------------------------------------------

@pytest.mark.parametrize("preset", ["gpu", "cpu", "smoke"])
def test_the_harness_reads_what_prepare_itself_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str) -> None:
    """What the harness reads from the source equals what prepare.py computes when a candidate
    imports it under EVO_PRESET and EVO_CACHE_DIR."""
    module = load_prepare(tmp_path, preset, monkeypatch)
    app = load(PREPARE, preset)
    assert app.time_budget == module.TIME_BUDGET and app.manifest == module.MANIFEST
    settings = module.PRESETS[preset]
    assert app.allowances == (settings["startup_allowance"], settings["eval_allowance"])
    assert app.seed_sizes == settings["seed_train"] and set(app.seed_sizes) == set(SIZE_NAMES)


def test_presets_is_defined_in_prepare_alone() -> None:
    """No other file of the harness or the seed spells a preset's numbers."""
    import evo.config

    assert not hasattr(evo.config, "PRESETS") and not hasattr(evo.config, "DEFAULT_ALLOWANCES")
    seed = SEED_TRAIN.read_text()
    assert "MODEL_SIZES" not in seed and "_size[" not in seed
    assert set(_presets()) == {"gpu", "cpu", "smoke"}


def test_reading_the_apparatus_imports_no_torch(tmp_path: Path) -> None:
    """The `evo run` process stays free of torch (230 MB of its 294 MB peak came from executing
    prepare.py to read two constants)."""
    probe = ("import sys, json; from pathlib import Path; import evo.cli.app; from evo.launch import apparatus\n"
             "app = apparatus.load(Path(sys.argv[1]), 'gpu')\n"
             "code = apparatus.seed_for(Path(sys.argv[1]), 'smoke', Path(sys.argv[2]).read_text(), sys.argv[2])\n"
             "print(json.dumps({'torch': 'torch' in sys.modules, 'budget': app.time_budget, 'depth2': 'DEPTH = 2' in code}))\n")
    result = subprocess.run([sys.executable, "-c", probe, str(PREPARE), str(SEED_TRAIN)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "EVO_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"torch": False, "budget": 300.0, "depth2": True}


def test_a_computed_presets_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    """PRESETS must stay a literal: anything else stops `evo run` with one sentence, exit 2."""
    bad = tmp_path / "prepare.py"
    bad.write_text(PREPARE.read_text().replace('"eval_tokens": 8192,', '"eval_tokens": 16 * 8 * 64,', 1))
    with pytest.raises(ApparatusError, match="PRESETS in .* must be a plain literal"):
        load(bad, "smoke")
    result = subprocess.run([sys.executable, "-m", "evo", "run", "--name", "x", "--prepare", str(bad), "--preset", "smoke",
                             "--seed-train", str(SURROGATE / "train.py"), "--operator", "tweak"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"})
    assert result.returncode == 2, result.stderr
    assert "must be a plain literal" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("source, message", [
    ("x = 1\n", "defines no PRESETS"),
    ("PRESETS = {'smoke': {'time_budget': 2}}\n", "has no 'startup_allowance', 'eval_allowance', 'seed_train'"),
    ("PRESETS = {'smoke': 3}\n", "defines no PRESETS"),
    ("PRESETS = (\n", "is not valid Python"),
])
def test_an_unreadable_apparatus_is_one_sentence(tmp_path: Path, source: str, message: str) -> None:
    path = tmp_path / "prepare.py"
    path.write_text(source)
    with pytest.raises(ApparatusError, match=message):
        load(path, "smoke")


def test_an_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ApparatusError, match="unknown preset 'huge'; choose one of gpu, cpu, smoke"):
        load(PREPARE, "huge")


# ----- the seed with the preset's numbers written in ---------------------------------------------

def test_render_seed_edits_only_the_assigned_values() -> None:
    code = ('"""doc: DEPTH = 1"""\nDEPTH = _size["DEPTH"]   # blocks\nBATCH = 2**19  # tokens\n'
            'def f():\n    DEPTH = 5\nNAME = "x"\n')
    out = render_seed(code, {"DEPTH": 4, "BATCH": 2048, "NAME": "SSSL"})
    assert out == ('"""doc: DEPTH = 1"""\nDEPTH = 4   # blocks\nBATCH = 2048  # tokens\n'
                   'def f():\n    DEPTH = 5\nNAME = "SSSL"\n')
    assert render_seed(code, {}) == code


def test_render_seed_fails_loudly_on_a_missing_name() -> None:
    with pytest.raises(ValueError, match="no top-level assignment of DEPTH"):
        render_seed("def f():\n    DEPTH = 5\n", {"DEPTH": 4})


def test_a_seed_train_without_a_size_is_one_sentence(tmp_path: Path) -> None:
    seed = tmp_path / "seed_train.py"
    seed.write_text(SEED_TRAIN.read_text().replace("\nDEPTH = 8 ", "\nLAYERS = 8 ", 1))
    with pytest.raises(ApparatusError, match="seed_train.py: the seed has no top-level assignment of DEPTH"):
        seed_for(PREPARE, "smoke", seed.read_text(), str(seed))


def test_seed_train_as_written_is_autoresearchs_gpu_setup() -> None:
    """`python train.py` by hand on a copy of seed_train.py trains autoresearch's model."""
    gpu = _presets()["gpu"]["seed_train"]
    seed = SEED_TRAIN.read_text()
    numbers = {c.name: c.value for c in find_constants(seed)}  # 2**19 as autoresearch spells it
    assert {name: numbers.get(name) for name in gpu if name != "WINDOW_PATTERN"} == \
        {name: value for name, value in gpu.items() if name != "WINDOW_PATTERN"}
    assert f'\nWINDOW_PATTERN = "{gpu["WINDOW_PATTERN"]}" ' in seed


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_the_seed_of_a_run_has_the_presets_plain_numbers(tmp_path: Path, preset: str) -> None:
    """The seed the CLI plans for a new run reads `DEPTH = <the preset's number>`, and the tweak
    operator sees every size as a plain number."""
    from evo.cli.app import _seed_plan
    from evo.storage import Archive

    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    plan = _seed_plan(RunConfig(name="p", preset=preset, seed_train=str(SEED_TRAIN)), archive, PREPARE)
    sizes = _presets()[preset]["seed_train"]
    assert f"\nDEPTH = {sizes['DEPTH']} " in plan.code and "_size[" not in plan.code
    assert f'\nWINDOW_PATTERN = "{sizes["WINDOW_PATTERN"]}" ' in plan.code
    tweakable = {c.name: c.value for c in find_constants(plan.code)}
    assert {name: tweakable.get(name) for name in sizes if name != "WINDOW_PATTERN"} == \
        {name: value for name, value in sizes.items() if name != "WINDOW_PATTERN"}


def test_any_other_seed_file_runs_as_written(tmp_path: Path) -> None:
    """Only seed_train.py follows the preset: a user's own train.py keeps its own sizes."""
    own = tmp_path / "train.py"
    own.write_text(SEED_TRAIN.read_text())
    assert seed_for(PREPARE, "smoke", own.read_text(), str(own)) == own.read_text()
    assert apparatus.SEED_TRAIN_NAME == SEED_TRAIN.name
