"""The per-lineage compile cache: an evaluation starts from a copy of its parent's (or its own
earlier replicate's) Inductor/Triton cache, so a hyperparameter-only child compiles nothing again
(bench/compile_cache.py measures it). Candidate code writes that cache, so it is treated as
untrusted: regular files only travel, only down a line of descent, as copies; the scorer never
reads it; a night keeps one per live candidate."""

from __future__ import annotations

import os
from pathlib import Path

from evo.storage.models import code_hash
from evo.launch.runner import COMPILE_CACHE, Limits, Slot, file_hash, inherit_compile_cache, run_evaluation

FIXTURES = Path(__file__).parent / "fixtures" / "surrogate"
PREPARE = FIXTURES / "prepare.py"
GOOD = (FIXTURES / "train.py").read_text()
LIMITS = Limits(time_budget=2, startup_allowance=5, eval_allowance=5, kill_grace=1)

# A candidate that leaves things in its compile cache as a hostile parent would: a kernel-like file,
# a link to a file of the harness's user, and a note of what it found there from its ancestors.
WRITER = GOOD.replace("t0 = time.time()", """import os, pathlib
cache = pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
print("CACHE", cache)
print("FOUND", sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else [])
cache.mkdir(parents=True, exist_ok=True)
import hashlib
(cache / ("kernel-" + hashlib.sha256(pathlib.Path("train.py").read_bytes()).hexdigest()[:12])).write_text("compiled")
link = cache / "secret-link"
if not link.exists():
    link.symlink_to(os.environ["SECRET_PATH"])
t0 = time.time()""").replace("import time", "import time\nimport os\nos.environ.setdefault('SECRET_PATH', '/etc/hostname')")


def evaluate(workdir: Path, code: str, seed: int = 42, compile_cache: Path | None = None):
    return run_evaluation(code=code, workdir=workdir, prepare_src=PREPARE, locked_hash=file_hash(PREPARE),
                          slot=Slot("cpu", {"CUDA_VISIBLE_DEVICES": ""}), seed=seed, limits=LIMITS, preset="smoke",
                          compile_cache=compile_cache)


def found(result) -> str:
    return next(line for line in result.log_tail.splitlines() if line.startswith("FOUND"))


def test_a_child_starts_from_a_copy_of_its_parents_cache_and_nothing_else(tmp_path: Path) -> None:
    parent = evaluate(tmp_path / "c1" / "r0", WRITER, seed=1)
    assert parent.outcome.state == "COMPLETE", parent.outcome
    assert found(parent) == "FOUND []", "the first evaluation starts cold"
    source = tmp_path / "c1" / "r0" / COMPILE_CACHE
    kernel = "kernel-" + code_hash(WRITER)[:12]
    assert (source / "inductor" / kernel).read_text() == "compiled", "the cache lives in the evaluation's folder"

    child = evaluate(tmp_path / "c2" / "r0", WRITER + "# a child\n", seed=2, compile_cache=source)
    assert child.outcome.state == "COMPLETE", child.outcome
    assert found(child) == f"FOUND ['{kernel}']", "the parent's kernel, not its link to a file outside"
    assert sorted(p.name for p in (source / "inductor").iterdir()) == [kernel, "secret-link"], \
        "what the child wrote stayed in its own copy"
    assert (tmp_path / "c2" / "r0" / COMPILE_CACHE / "inductor" / ("kernel-" + code_hash(WRITER + "# a child\n")[:12])).exists()

    rival = evaluate(tmp_path / "c3" / "r0", WRITER, seed=3)
    assert found(rival) == "FOUND []", "no cache is shared outside a line of descent"


def test_the_scorer_never_reads_the_candidates_cache(tmp_path: Path, monkeypatch) -> None:
    from evo.launch import runner
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "shared"))   # a user's own shared cache
    scorer_env: dict = {}
    start = runner._Scorer.__init__

    def spy(self, python, argv, harness, env):
        scorer_env.update(env)
        start(self, python, argv, harness, env)

    monkeypatch.setattr(runner._Scorer, "__init__", spy)
    result = evaluate(tmp_path / "c1" / "r0", WRITER)
    assert result.outcome.state == "COMPLETE", result.outcome
    cache_line = next(line for line in result.log_tail.splitlines() if line.startswith("CACHE"))
    assert cache_line == f"CACHE {tmp_path / 'c1' / 'r0' / COMPILE_CACHE / 'inductor'}", "not the shared one"
    assert not (tmp_path / "shared").exists()
    harness = tmp_path / "c1" / "r0.harness"
    for key in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert Path(scorer_env[key]).is_relative_to(harness / COMPILE_CACHE), (key, scorer_env[key])


def test_inherit_copies_regular_files_within_a_size_limit(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "inductor" / "ab").mkdir(parents=True)
    (source / "inductor" / "ab" / "k.py").write_text("x" * 100)
    (source / "triton").mkdir()
    (source / "triton" / "t.so").write_bytes(b"\0" * 50)
    secret = tmp_path / "secret"
    secret.write_text("key")
    (source / "inductor" / "leak").symlink_to(secret)
    (source / "outside").symlink_to(tmp_path, target_is_directory=True)
    assert inherit_compile_cache(source, tmp_path / "a") == 150
    copied = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert copied == ["inductor/ab/k.py", "triton/t.so"]
    assert os.stat(tmp_path / "a" / "inductor" / "ab" / "k.py").st_ino != os.stat(source / "inductor" / "ab" / "k.py").st_ino
    assert inherit_compile_cache(source, tmp_path / "b", max_bytes=149) == 0 and not (tmp_path / "b").exists()
    assert inherit_compile_cache(None, tmp_path / "c") == 0 and inherit_compile_cache(tmp_path / "none", tmp_path / "c") == 0


def test_a_night_hands_caches_down_its_lines_and_keeps_one_per_live_candidate(tmp_path: Path) -> None:
    import ast
    import subprocess
    import sys

    from evo.storage import Archive
    seed = tmp_path / "seed.py"
    seed.write_text(WRITER)
    url = f"sqlite:///{tmp_path}/evo.db"
    run = subprocess.run([sys.executable, "-m", "evo", "run", "--prepare", str(PREPARE), "--seed-train", str(seed),
                          "--preset", "smoke", "--operator", "tweak", "--name", "c", "--population", "3",
                          "--max-candidates", "12", "--storage", url], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    archive = Archive(url, writer=False)
    r = archive.find_run("c")
    by_id = {c.id: c for c in archive.candidates(r.id)}
    evals = archive.evaluations(r.id)
    inherited = 0
    for e in evals:
        if e.state != "COMPLETE" or e.candidate_id == r.seed_id:
            continue
        seen = set(ast.literal_eval(next(line for line in e.log_tail.splitlines()
                                         if line.startswith("FOUND"))[len("FOUND "):]))
        c = by_id[e.candidate_id]
        if c.parent_id is not None and f"kernel-{by_id[c.parent_id].code_hash[:12]}" in seen:
            inherited += 1
        line, p = {c.id}, c.parent_id
        while p is not None:
            line.add(p)
            p = by_id[p].parent_id
        assert seen <= {f"kernel-{by_id[i].code_hash[:12]}" for i in line}, (c.number, seen)   # its own line's only
    assert inherited >= 3, "children started from their parents' kernels"
    for c in by_id.values():
        caches = [e for e in evals if e.candidate_id == c.id and e.workdir
                  and (Path(e.workdir) / COMPILE_CACHE).exists()]
        if c.in_population or c.accepted is None:
            assert len(caches) <= 1, (c.number, [e.replicate for e in caches])
        else:
            assert caches == [], (c.number, c.state, c.accepted)
