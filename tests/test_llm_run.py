"""`evo run` with an LLM operator end to end: the real openai SDK against the fake server on
127.0.0.1, real candidate subprocesses, and what `evo show` tells the user afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_server import FakeLLMServer

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = ROOT / "tests" / "fixtures" / "surrogate"


def evo(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db", **(env or {})}
    full.pop("OPENAI_API_KEY", None)  # a local base URL needs no key
    return subprocess.run([sys.executable, "-m", "evo", *args], cwd=tmp_path, env=full, capture_output=True,
                          text=True, timeout=timeout)


def test_llm_run_on_the_surrogate_records_hypotheses_calls_and_cost(tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        result = evo(tmp_path, "run", "--name", "llm", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train",
                     str(SURROGATE / "train.py"), "--preset", "smoke", "--model", f"openai:fake@{server.openai_url}",
                     "--max-candidates", "6", "--replicates", "2", "--population", "3",
                     "--program", str(ROOT / "program.md"))
        prompts = [r.prompt_text for r in server.requests]
    assert result.returncode == 0, result.stderr
    assert prompts and "evo research program" in prompts[0] and "X1 = 1.0" in prompts[0]
    listing = evo(tmp_path, "candidates", "-f", "json")
    import json
    rows = json.loads(listing.stdout)
    children = [r for r in rows if r["number"] > 0]
    assert len(children) == 6
    assert all(r["operator"] in ("mutate", "crossover", "merge") for r in children)
    evaluated = [r for r in children if r["state"] == "COMPLETE"]
    assert evaluated and all(r["hypothesis"] and r["model"] for r in evaluated if r["operator"] != "merge")
    number = next(r["number"] for r in evaluated if r["operator"] == "mutate")
    shown = evo(tmp_path, "show", str(number)).stdout
    assert "hypothesis:" in shown and "rationale:" in shown
    assert f"model: openai:fake@{server.openai_url}" in shown and "tokens" in shown and "cost $" in shown
    status = evo(tmp_path, "status").stdout
    assert "LLM spend $" in status


def test_missing_key_fails_before_anything_runs(tmp_path: Path) -> None:
    result = evo(tmp_path, "run", "--name", "k", "--model", "openai:gpt-5", "--prepare", str(SURROGATE / "prepare.py"),
                 "--seed-train", str(SURROGATE / "train.py"), "--preset", "smoke")
    assert result.returncode == 2 and "OPENAI_API_KEY" in result.stderr
    assert not (tmp_path / "archive" / "runs").exists()


@pytest.mark.slow
def test_llm_run_on_smoke_with_the_real_seed(tmp_path: Path, smoke_cache: Path) -> None:
    """The issue's end-to-end check: seed_train.py, torch, the smoke preset, the fake LLM."""
    with FakeLLMServer() as server:
        result = evo(tmp_path, "run", "--name", "e2e", "--preset", "smoke", "--model", f"openai:fake@{server.openai_url}",
                     "--max-candidates", "2", "--replicates", "2", "--prepare", str(ROOT / "prepare.py"),
                     "--seed-train", str(ROOT / "seed_train.py"), "--program", str(ROOT / "program.md"),
                     env={"EVO_CACHE_DIR": str(smoke_cache), "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tsv = evo(tmp_path, "candidates", "-f", "tsv").stdout.splitlines()
    assert len(tsv) == 1 + 3
    evaluated = [row.split("\t") for row in tsv[2:] if row.split("\t")[3] in ("keep", "discard")]
    assert evaluated and all(row[4] for row in evaluated), "evaluated candidates carry their hypotheses"


def test_a_run_seeded_from_a_greedy_branch_shows_its_discards_to_the_llm(tmp_path: Path) -> None:
    """`evo run --seed-from REPO` with the LLM operator: the greedy branch's discarded and crashed
    experiments (reset away, only in results.tsv) are in the very first mutation prompt."""
    from test_git import HEADER, commit_file, new_repo
    src = (SURROGATE / "train.py").read_text()
    repo = new_repo(tmp_path / "ar")
    commit_file(repo, "train.py", src, "base")
    kept = commit_file(repo, "train.py", src.replace("X1 = 1.0", "X1 = 1.5"), "x1 up")
    discard = commit_file(repo, "train.py", src.replace("X1 = 1.0", "X1 = 1.5").replace("X2 = 1.0", "X2 = 0.5"),
                          "x2 halved")
    repo.git.reset("-q", "--hard", "HEAD~1")
    crash = commit_file(repo, "train.py", src.replace("X1 = 1.0", "X1 = 1.5") + "raise SystemExit(1)\n", "x3 crash")
    repo.git.reset("-q", "--hard", "HEAD~1")
    (tmp_path / "ar" / "results.tsv").write_text(
        HEADER + f"baseline\t1.0\t1\tkeep\tbaseline\n{kept[:7]}\t0.9\t1\tkeep\tx1 up\n"
        f"{discard[:7]}\t0.95\t1\tdiscard\tx2 halved\n{crash[:7]}\t0\t0\tcrash\tx3 crash\n")
    with FakeLLMServer() as server:
        result = evo(tmp_path, "run", "--name", "seeded", "--seed-from", str(tmp_path / "ar"), "--prepare",
                     str(SURROGATE / "prepare.py"), "--preset", "smoke", "--model", f"openai:fake@{server.openai_url}",
                     "--max-candidates", "1", "--replicates", "2", "--program", str(ROOT / "program.md"))
        first = server.requests[0].prompt_text
    assert result.returncode == 0, result.stderr
    ledger = first.split("## Ideas tried elsewhere in this run")[1]
    assert "imported x2 halved" in ledger and "-> discarded" in ledger
    assert "x3 crash" in first.split("## Recent failures near this parent")[1]
