"""What a run trusts about its scores: the apparatus it started with, and replicates that differ."""

from __future__ import annotations

import shutil
from pathlib import Path

from evo.core.acceptance import ignores_seed
from evo.storage import Archive

from test_cli_input import SURROGATE, evo, surrogate_run

IGNORES_SEED = (SURROGATE / "train.py").read_text().replace(
    "from prepare import evaluate_bpb", "import os\nos.environ['EVO_SEED'] = '7'  # every replicate the same\nfrom prepare import evaluate_bpb")


def test_ignores_seed_needs_two_identical_values() -> None:
    assert ignores_seed([1.25, 1.25]) and ignores_seed([1.0, 1.0, 1.0])
    assert not ignores_seed([1.25]) and not ignores_seed([]) and not ignores_seed([1.25, 1.2500001])


def test_resume_refuses_another_prepare_and_other_data(tmp_path: Path) -> None:
    prepare = tmp_path / "apparatus" / "prepare.py"
    prepare.parent.mkdir()
    shutil.copy(SURROGATE / "prepare.py", prepare)
    first = surrogate_run(tmp_path, "--name", "locked", "--max-candidates", "1", "--replicates", "2",
                          "--no-sandbox", prepare=prepare)
    assert first.returncode == 0, first.stderr
    prepare.write_text(prepare.read_text().replace("TARGETS = (2.0, 0.5, 4.0, 1.5)", "TARGETS = (2.0, 0.5, 4.0, 1.0)"))
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    before = [(e.id, e.state, e.val_bpb) for e in archive.evaluations(archive.find_run("locked").id)]
    archive.close()
    resumed = surrogate_run(tmp_path, "--name", "locked", "--resume", "--max-candidates", "3", prepare=prepare)
    assert resumed.returncode == 2
    assert "prepare.py changed since run 'locked' started" in resumed.stderr and "Traceback" not in resumed.stderr
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    assert [(e.id, e.state, e.val_bpb) for e in archive.evaluations(archive.find_run("locked").id)] == before


def test_a_seed_that_ignores_evo_seed_cannot_calibrate_the_temperature(tmp_path: Path) -> None:
    seed = tmp_path / "seed.py"
    seed.write_text(IGNORES_SEED)
    result = evo(tmp_path, "run", "--name", "same", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train", str(seed),
                 "--preset", "smoke", "--operator", "tweak", "--max-candidates", "2", "--replicates", "2")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "scored exactly the same val_bpb: it ignores EVO_SEED" in result.stderr
    assert "explicit --temperature" in result.stderr and "Traceback" not in result.stderr


def test_evo_show_flags_a_candidate_whose_replicates_ignore_evo_seed(tmp_path: Path) -> None:
    seed = tmp_path / "seed.py"
    seed.write_text(IGNORES_SEED)
    run = evo(tmp_path, "run", "--name", "same", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train", str(seed),
              "--preset", "smoke", "--operator", "tweak", "--max-candidates", "1", "--replicates", "2",
              "--temperature", "0.001")
    assert run.returncode == 0, run.stderr
    shown = evo(tmp_path, "show", "0", "--name", "same")
    assert shown.returncode == 0, shown.stderr
    assert "it ignores EVO_SEED" in shown.stdout and "its own spread is not trusted" in shown.stdout
