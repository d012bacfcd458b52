"""The command line as a user meets it: what a resume keeps, what a failed start leaves behind,
input that must be refused in one sentence, and what the readers print. Every command runs as a
real `python -m evo` subprocess on a real SQLite archive."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import git as gitpython
import pytest
from rich.console import Console

from evo.storage import ACTIVE, Archive, owner_id
from evo.launch.runner import detect_slots
from evo.cli.view import RunView

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = ROOT / "tests" / "fixtures" / "surrogate"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
HUGE = str(10 ** 30)


def evo(cwd: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m evo ARGS` in `cwd`, its archive in cwd/archive, output redirected (no terminal)
    unless `env` says otherwise."""
    full = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR", "COLUMNS")}
    full.update(EVO_STORAGE=f"sqlite:///{cwd}/archive/evo.db", **env)
    return subprocess.run([sys.executable, "-m", "evo", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full)


def surrogate_run(cwd: Path, *args: str, prepare: Path = SURROGATE / "prepare.py", **kw) -> subprocess.CompletedProcess:
    return evo(cwd, "run", "--prepare", str(prepare), "--seed-train", str(SURROGATE / "train.py"), "--preset", "smoke",
               "--operator", "tweak", *args, **kw)


@contextmanager
def archive_of(cwd: Path) -> Iterator[Archive]:
    archive = Archive(f"sqlite:///{cwd}/archive/evo.db", writer=False)
    try:
        yield archive
    finally:
        archive.close()


def stored(cwd: Path, name: str) -> tuple[dict, int]:
    """The run's stored configuration and how many candidates it has."""
    with archive_of(cwd) as archive:
        run = archive.find_run(name)
        return json.loads(run.config), len(archive.candidates(run.id))


def run_names(cwd: Path) -> list[str]:
    with archive_of(cwd) as archive:
        return [r.name for r in archive.runs()]


def one_sentence(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---------------------------------------------------------------------------
# --resume keeps the stored budget unless a flag changes it
# ---------------------------------------------------------------------------

def test_plain_resume_keeps_the_budget_and_a_flag_changes_it(tmp_path: Path) -> None:
    budget = {"max_candidates": 2, "max_cost": 5.0, "hours": 2.0, "slots": 2}

    def budget_and_count() -> tuple[dict, int]:
        config, count = stored(tmp_path, "b")
        return {k: config[k] for k in budget}, count

    first = surrogate_run(tmp_path, "--name", "b", "--max-candidates", "2", "--max-cost", "5", "--hours", "2",
                          "--slots", "2", "--replicates", "2")
    assert first.returncode == 0, first.stderr
    assert budget_and_count() == (budget, 3)

    # A plain --resume of a finished run has nothing left to do; had it lost the budget it would
    # run on without end (and time out here).
    resume = ("run", "--resume", "--name", "b", "--prepare", str(SURROGATE / "prepare.py"))
    plain = evo(tmp_path, *resume, timeout=240)
    assert plain.returncode == 0, plain.stderr
    assert budget_and_count() == (budget, 3)

    more = evo(tmp_path, *resume, "--max-candidates", "4", timeout=240)
    assert more.returncode == 0, more.stderr
    assert budget_and_count() == ({**budget, "max_candidates": 4}, 5)

    again = evo(tmp_path, *resume, timeout=240)
    assert again.returncode == 0, again.stderr
    assert budget_and_count() == ({**budget, "max_candidates": 4}, 5), "a changed budget survives a plain --resume"


# ---------------------------------------------------------------------------
# A failed start leaves no run behind
# ---------------------------------------------------------------------------

FAILING_PREPARE = '''"""A prepare.py whose data was never prepared and whose preparation fails."""
import sys

PRESETS = {"smoke": {"time_budget": 2, "startup_allowance": 180.0, "eval_allowance": 120.0, "seed_train": {}}}
TIME_BUDGET = 2
CACHE_ENV = "EVO_TEST_NEVER_SET"
DEFAULT_CACHE_ROOT = "never-prepared"
MANIFEST_NAME = "manifest.json"

if __name__ == "__main__":
    sys.exit("cannot download the shards")
'''


OFFLINE = ("could not download shard_00000.parquet from https://huggingface.co after 3 attempts (ConnectionError); "
           "without network, prepare from local files with --text PATH.")


@pytest.mark.parametrize("how", ["prepare fails", "prepare is offline", "operator cannot be built"])
def test_a_failed_start_leaves_no_run_and_the_name_starts_again(tmp_path: Path, how: str) -> None:
    if how.startswith("prepare"):
        bad_prepare = tmp_path / "bad_prepare.py"
        offline = how == "prepare is offline"  # prepare.py's own sentence, which names its --text flag
        bad_prepare.write_text(FAILING_PREPARE.replace("cannot download the shards", OFFLINE) if offline else FAILING_PREPARE)
        failed = surrogate_run(tmp_path, "--name", "z", "--max-candidates", "1", prepare=bad_prepare)
        message = (f"To prepare from local text instead: `python {bad_prepare} --preset smoke --text FILE [FILE ...]`"
                   if offline else "preparing preset 'smoke' failed: cannot download the shards")
    else:  # a self-hosted model needs no key, so only the missing research program fails, after the checks
        failed = surrogate_run(tmp_path, "--name", "z", "--operator", "llm", "--model", "openai:m@http://127.0.0.1:9/v1",
                               "--program", str(tmp_path / "missing.md"))
        message = "cannot read the research program"
    assert failed.returncode == 2 and message in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
    assert run_names(tmp_path) == [], "the failed start left no run"

    again = surrogate_run(tmp_path, "--name", "z", "--max-candidates", "1", "--replicates", "2")
    assert again.returncode == 0, again.stderr
    assert run_names(tmp_path) == ["z"]


def test_a_failed_resume_keeps_the_run(tmp_path: Path) -> None:
    assert surrogate_run(tmp_path, "--name", "k", "--max-candidates", "1", "--replicates", "2").returncode == 0
    bad_prepare = tmp_path / "bad_prepare.py"
    bad_prepare.write_text(FAILING_PREPARE)
    failed = evo(tmp_path, "run", "--resume", "--name", "k", "--prepare", str(bad_prepare))
    assert failed.returncode == 2 and "preparing preset 'smoke' failed" in failed.stderr, failed.stderr
    with archive_of(tmp_path) as archive:
        run = archive.find_run("k")
        assert run.owner is None and len(archive.candidates(run.id)) == 2, "nothing archived is lost"


# ---------------------------------------------------------------------------
# Values that were accepted but wrong
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature", "inf"], "--temperature must be a finite number"),
    (["--hours", "nan"], "--hours must be a finite number"),
    (["--hours", "inf"], "--hours must be a finite number"),
    (["--max-cost", "nan"], "--max-cost must be a finite number"),
    (["--max-cost", "inf"], "--max-cost must be a finite number"),
    (["--eval-allowance", "nan"], "--eval-allowance must be a finite number"),
    (["--population", HUGE], "--population must be at most 10,000"),
    (["--population", "20000"], "--population must be at most 10,000"),
    (["--replicates", "100000"], "--replicates must be at most 100"),
    (["--slots", HUGE], "--slots must be at most 1,024"),
    (["--gpus", "7"], "no GPU is visible here"),
    (["--operator", "llm", "--model", "openai:m@http://localhost:99999/v1"], "an optional port from 1 to 65535"),
    (["--operator", "llm", "--model", "openai:m@http://[::1/v1"], "an optional port from 1 to 65535"),
    (["--operator", "llm", "--model", "openai:m@http://:8000/v1"], "must be http:// or https://, a host"),
    (["--name", ".."], "run name '..' must be"),
    (["--name", "."], "run name '.' must be"),
    (["--name", "../escape"], "without '/'"),
    (["--name", "a\\b"], "without '/'"),
    (["--name", "night\n1"], "line breaks"),
    (["--name", "night\x1b[31m"], "printable"),
    (["--name", " night"], "surrounding spaces"),
    (["--name", "n" * 201], "1 to 200 printable characters"),
])
def test_bad_values_are_one_sentence_and_create_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    result = surrogate_run(tmp_path, "--name", "x", "--max-candidates", "1", *args, CUDA_VISIBLE_DEVICES="")
    one_sentence(result, message)
    assert run_names(tmp_path) == []
    assert not (tmp_path / "archive" / "escape").exists() and not (tmp_path / "archive" / "c00000").exists()


def test_gpus_must_be_visible() -> None:
    assert [s.name for s in detect_slots("0,1", None, visible=2)] == ["gpu0", "gpu1"]
    with pytest.raises(ValueError, match=r"names GPU 7, but only 2 GPU\(s\) are visible here \(0 to 1\)"):
        detect_slots("0,7", None, visible=2)
    with pytest.raises(ValueError, match="no GPU is visible here"):
        detect_slots("0", None, visible=0)


# ---------------------------------------------------------------------------
# What the readers print, on a run seeded from a greedy autoresearch repository
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run seeded from a greedy repo: its history is imported (hypotheses like 'x1 up [bea057b]',
    values measured elsewhere), then two tweaks."""
    cwd = tmp_path_factory.mktemp("seeded")
    repo = gitpython.Repo.init(cwd / "ar", initial_branch="master")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "t").set_value("user", "email", "t@example.com")
    src = (SURROGATE / "train.py").read_text()
    shas = []
    for text, message in ((src, "base"), (src.replace("X1 = 1.0", "X1 = 1.5"), "x1")):
        (cwd / "ar" / "train.py").write_text(text)
        repo.index.add(["train.py"])
        shas.append(repo.index.commit(message).hexsha)
    (cwd / "ar" / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                                            f"{shas[0][:7]}\t0.997900\t1\tkeep\tbaseline [@base_url]\n"
                                            f"{shas[1][:7]}\t0.990000\t1\tkeep\tx1 up\n")
    result = evo(cwd, "run", "--name", "g", "--seed-from", str(cwd / "ar"), "--prepare", str(SURROGATE / "prepare.py"),
                 "--preset", "smoke", "--operator", "tweak", "--max-candidates", "2", "--replicates", "2")
    assert result.returncode == 0, result.stderr
    return cwd


def test_bracketed_text_survives_the_candidates_table(seeded: Path) -> None:
    with archive_of(seeded) as archive:
        first = archive.candidates(archive.find_run("g").id)[0]
    assert first.operator == "import" and re.search(r"\[[0-9a-f]{7}\]$", first.hypothesis), first.hypothesis
    piped = evo(seeded, "candidates")
    assert piped.returncode == 0, piped.stderr
    assert first.hypothesis in piped.stdout and "[@base_url]" in piped.stdout
    terminal = evo(seeded, "candidates", TTY_COMPATIBLE="1", COLUMNS="250")
    assert terminal.returncode == 0, terminal.stderr
    text = ANSI.sub("", terminal.stdout)
    assert "┃" in text or "│" in text, "a terminal gets the rich table"
    assert first.hypothesis in text and "[@base_url]" in text


def test_live_view_shows_brackets_and_how_long_each_slot_has_run() -> None:
    view = RunView("r", live=False, stream=io.StringIO())
    view.slots = {"cpu": ("candidate 3 [bea057b] r0", time.monotonic() - 150)}
    out = io.StringIO()
    Console(file=out, width=120).print(view._render())
    assert "candidate 3 [bea057b] r0" in out.getvalue()
    assert re.search(r"cpu\s+│?\s*[23] min", out.getvalue()), out.getvalue()


def test_help_shows_bracketed_syntax(tmp_path: Path) -> None:
    result = evo(tmp_path, "run", "--help", COLUMNS="200")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "provider:model[@base_url]" in text and "REPO[@REF]" in text and "evo:RUN[:N]" in text


def test_imported_candidate_shows_its_imported_value(seeded: Path) -> None:
    shown = evo(seeded, "show", "0", "--name", "g")
    assert shown.returncode == 0, shown.stderr
    assert "val_bpb: - (imported 0.997900, measured elsewhere)" in shown.stdout
    best = evo(seeded, "best", "--name", "g")
    assert best.returncode == 0, best.stderr
    path = best.stdout.split("path from the seed:")[1]
    assert re.search(r"#0\s+\(0\.997900 imported\)", path), best.stdout
    table = evo(seeded, "candidates", "--name", "g").stdout
    assert "(0.997900 imported)" in table


@pytest.mark.parametrize("args", [["show", HUGE], ["diff", "0", HUGE], ["show", str(2 ** 63)]])
def test_a_candidate_number_beyond_the_database_is_one_sentence(seeded: Path, args: list[str]) -> None:
    one_sentence(evo(seeded, *args, "--name", "g"), f"no candidate number {args[-1]}")


# ---------------------------------------------------------------------------
# Status of runs whose owner died, and names that are never cut
# ---------------------------------------------------------------------------

def dead_owner() -> str:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{os.uname().nodename}:{int(child.stdout)}"


def test_a_run_whose_owner_died_is_not_shown_active(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db")
    request.addfinalizer(archive.close)
    long_name = "night-" + "x" * 110 + "-end"
    for name, owner in (("dead", dead_owner()), ("alive", owner_id()), ("silent", owner_id()), (long_name, owner_id())):
        run = archive.create_run(name, {"preset": "smoke", "population": 8, "temperature": "auto", "cooling": "exp",
                                        "operator": "tweak"})
        archive.claim_run(run.id, owner, stale_after=60.0)
        assert archive.run_by_id(run.id).status == ACTIVE
    silent = archive.find_run("silent")
    archive.update_run(silent.id, heartbeat_at=silent.heartbeat_at.replace(year=2000))

    status = evo(tmp_path, "status", "--name", "dead")
    assert status.returncode == 0, status.stderr
    first = status.stdout.splitlines()[0]
    assert first.startswith("run dead: STOPPED (owner ") and "gone" in first
    assert "evo run --resume --name dead" in first
    assert evo(tmp_path, "status", "--name", "alive").stdout.startswith("run alive: ACTIVE (")
    assert evo(tmp_path, "status", "--name", "silent").stdout.startswith("run silent: UNRESPONSIVE (")

    listing = evo(tmp_path, "list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split()[1] for line in listing.stdout.splitlines()[1:]}
    assert rows == {"dead": "STOPPED", "alive": ACTIVE, "silent": "UNRESPONSIVE", long_name: ACTIVE}

    for columns in ("60", "250"):  # too narrow for the table: plain lines; wide enough: the rich table
        shown = ANSI.sub("", evo(tmp_path, "list", TTY_COMPATIBLE="1", COLUMNS=columns).stdout)
        assert long_name in shown, f"a terminal {columns} columns wide never cuts a run name"
        assert ("┃" in shown) == (columns == "250"), shown
