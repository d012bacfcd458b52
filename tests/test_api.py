"""evo.load: a run read from Python as the CLI's JSON records and as pandas DataFrames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import evo
from evo.storage import ArchiveError

SURROGATE = Path(__file__).resolve().parent / "fixtures" / "surrogate"


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("api")
    url = f"sqlite:///{root}/archive/evo.db"
    env = {**os.environ, "EVO_STORAGE": url}
    done = subprocess.run([sys.executable, "-m", "evo", "run", "--name", "night", "--prepare", str(SURROGATE / "prepare.py"),
                           "--seed-train", str(SURROGATE / "train.py"), "--preset", "smoke", "--operator", "tweak",
                           "--max-candidates", "4", "--replicates", "2", "--no-sandbox"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return root, url


def test_load_gives_the_records_evo_candidates_prints(night: tuple[Path, str]) -> None:
    root, url = night
    printed = json.loads(subprocess.run([sys.executable, "-m", "evo", "candidates", "-f", "json", "--storage", url],
                                        cwd=root, capture_output=True, text=True, check=True).stdout)
    loaded = evo.load(run="night", storage=url)
    assert loaded.candidates == printed and loaded.run["name"] == "night"
    assert len(loaded.candidates) == 5 and loaded.candidates[1]["parent"] is not None
    assert len(loaded.evaluations) == sum(len(c["evaluations"]) for c in printed) >= 6
    assert {e["candidate"] for e in loaded.evaluations} == {c["number"] for c in printed if c["evaluations"]}


def test_load_reads_the_archive_evo_storage_names_and_says_what_is_missing(night: tuple[Path, str],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = night
    monkeypatch.setenv("EVO_STORAGE", url)
    assert evo.load().run["name"] == "night"  # the default run, from the default archive
    with pytest.raises(ArchiveError, match="no run named 'other'"):
        evo.load(run="other")


def test_dataframes_of_candidates_and_evaluations(night: tuple[Path, str]) -> None:
    pd = pytest.importorskip("pandas", reason="pandas is in the test extra; without it to_dataframe raises ImportError")
    loaded = evo.load(run="night", storage=night[1])
    cands = loaded.to_dataframe()
    assert list(cands["number"]) == [c["number"] for c in loaded.candidates]
    assert {"val_bpb", "state", "parent", "hypothesis", "n_evaluations"} <= set(cands.columns)
    assert cands["n_evaluations"].sum() == len(loaded.evaluations)
    evals = loaded.to_dataframe("evaluations")
    assert len(evals) == len(loaded.evaluations) and pd.api.types.is_datetime64_any_dtype(evals["started_at"])
    with pytest.raises(ValueError, match="'candidates' or 'evaluations'"):
        loaded.to_dataframe("runs")
