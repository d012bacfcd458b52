"""Seeding from a greedy autoresearch repository or another evo run, on real repositories built in
a temp folder (the fixtures of test_git.py): what counts as kept, which results.tsv is read and
what the plan summary says about it, short hashes, extra columns, remote branches, an evo run's
rejected history, `--seed-train` with `--seed-from`, and how the report draws a seeded run."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import git as gitpython
import pytest

from evo.storage import COMPLETE, FAIL, Archive
from evo.config import RunConfig
from evo.engine.seeding import seed_from_evo, summarize_plan, with_seed_file
from evo.gitio import GitError
from evo.gitio.greedy import seed_from_repo
from evo.gitio.results_tsv import parse_results_tsv
from evo.report import data, figures
from test_git import (HEADER, accept_measured_seed, SURROGATE, Greedy, commit_file, evo_archive, greedy_repo, keys, new_repo,  # noqa: F401
                      seeded_archive, train_code)


def rows_tsv(rows: list[tuple[str, str, str, str]]) -> str:
    return "".join(f"{c}\t{v}\t40.0\t{s}\t{d}\n" for c, v, s, d in rows)


def plain_rows(g: Greedy) -> str:
    """results.tsv of greedy_repo without its oddities: baseline, k1, d1, k2 (best), c1, k3."""
    return HEADER + rows_tsv([("baseline", "0.9979", "keep", "baseline"), (g.short("k1"), "0.99", "keep", "lr"),
                              (g.short("d1"), "0.995", "discard", "gelu"), (g.short("k2"), "0.985", "keep", "depth 6"),
                              (g.short("c1"), "0", "crash", "oom"), (g.short("k3"), "0.987", "keep", "lr again")])


# ----- 15a: only keep rows are kept ---------------------------------------------------------------

def test_commits_after_the_best_that_results_tsv_does_not_list_are_not_kept(tmp_path: Path) -> None:
    """A discard left in place, an interrupted experiment and its revert on top of the greedy
    branch: imported as what they are, never as kept."""
    g = greedy_repo(tmp_path, results=None)
    d2 = commit_file(g.repo, "train.py", train_code(0.03, 6, "WD = 0.1\n"), "weight decay (not reset)")
    x = commit_file(g.repo, "train.py", train_code(0.03, 6, "WD = 0.1\nWARMUP = 5\n"), "warmup (interrupted)")
    g.repo.git.revert("--no-edit", "HEAD")
    revert = g.repo.head.commit.hexsha
    (g.path / "results.tsv").write_text(plain_rows(g) + rows_tsv([(d2[:7], "0.990", "discard", "weight decay")]))
    plan = seed_from_repo(str(g.path))
    h = {item.key: item for item in plan.history}
    base, k1, k2, k3 = (g.sha[n] for n in ("base", "k1", "k2", "k3"))
    assert plan.code == g.code["k2"] and plan.parent_key == k2
    assert [k for k in keys(plan) if h[k].status == "keep"] == [base, k1, k2, k3], "exactly the keep rows are kept"
    assert h[d2].status == "discard" and h[d2].parent_key == k3 and h[d2].val_bpb == pytest.approx(0.99)
    assert h[x].status == "unrecorded" and h[x].parent_key == d2 and h[x].val_bpb is None
    assert h[revert].status == "unrecorded" and h[revert].parent_key == x
    assert "not in results.tsv" in h[x].hypothesis
    summary = summarize_plan(plan)
    assert "history: 4 kept, 2 discarded, 1 crashed, 2 not in results.tsv" in summary
    assert "2 commit(s) on autoresearch/mar5 changed train.py but are not in results.tsv" in summary
    archive, run = seeded_archive(tmp_path, plan)
    accepted = [c.accepted for c in archive.candidates(run.id) if c.operator == "import" and c.state == COMPLETE]
    assert accepted.count(True) == 4, "the archive reports as many kept as results.tsv has keep rows"


# ----- 15b and 15e: which results.tsv, which mode ---------------------------------------------------

def test_a_header_only_results_tsv_is_tip_mode_and_says_so(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path, results=None)
    (g.path / "results.tsv").write_text(HEADER)
    plan = seed_from_repo(str(g.path))
    assert plan.code == g.code["k3"] and all(h.status == "keep" for h in plan.history)
    summary = summarize_plan(plan)
    assert f"{g.path / 'results.tsv'} has no rows yet (a header only): tip mode" in summary
    (g.path / "results.tsv").unlink()
    assert "no results.tsv (not in the work tree of autoresearch/mar5, not committed there): tip mode" in \
        summarize_plan(seed_from_repo(str(g.path)))


def test_the_summary_names_the_results_tsv_it_read(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path)
    summary = summarize_plan(seed_from_repo(str(g.path)))
    assert f"read {g.path / 'results.tsv'} (7 row(s))" in summary, "8 rows, one of them a duplicate"
    assert f"the seed is {g.short('k2')}: the keep row with the lowest val_bpb" in summary
    c = greedy_repo(tmp_path / "c", results="committed")
    c.repo.git.checkout("-q", "master")
    assert "read autoresearch/mar5:results.tsv (7 row(s))" in summarize_plan(seed_from_repo(f"{c.path}@autoresearch/mar5"))


def test_the_work_tree_results_tsv_of_another_branch_is_not_read(tmp_path: Path) -> None:
    """Checked out: autoresearch/mar6 with its own untracked results.tsv; seeding from mar5 (which
    has no committed results.tsv) must not take mar6's rows for mar5's."""
    g = greedy_repo(tmp_path, results=None)
    g.repo.git.checkout("-q", "-b", "autoresearch/mar6", "master")
    m1 = commit_file(g.repo, "train.py", train_code(0.05, 8), "mar6: LR 0.05")
    (g.path / "results.tsv").write_text(HEADER + rows_tsv([("baseline", "0.998", "keep", "baseline"),
                                                           (m1[:7], "0.950", "keep", "LR 0.05")]))
    plan = seed_from_repo(f"{g.path}@autoresearch/mar5")
    assert plan.code == g.code["k3"] and m1 not in keys(plan)
    summary = summarize_plan(plan)
    assert f"{g.path / 'results.tsv'} was not read: it belongs to what is checked out there, not to autoresearch/mar5" in summary
    assert "tip mode" in summary
    # the checked-out branch still reads it
    assert seed_from_repo(f"{g.path}@autoresearch/mar6").code == train_code(0.05, 8)


# ----- 15c: short hashes ---------------------------------------------------------------------------

def store_commit_starting_with(repo: gitpython.Repo, prefix: str, tree: str, parent: str, message: str) -> str:
    """Write a commit object (reachable from no ref) whose hash starts with `prefix`, found by
    trying messages: the hash of a commit is the SHA-1 of its text, so it can be searched here."""
    for n in range(10_000_000):
        body = (f"tree {tree}\nparent {parent}\nauthor A <a@b> 0 +0000\ncommitter A <a@b> 0 +0000\n\n"
                f"{message} {n}\n").encode()
        if hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest().startswith(prefix):
            out = subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--stdin"], input=body,
                                 cwd=repo.working_tree_dir, capture_output=True, check=True)
            return out.stdout.decode().strip()
    raise AssertionError(f"no commit starting with {prefix}")


def test_a_short_hash_resolves_to_the_commit_on_ref_first(tmp_path: Path) -> None:
    """Another commit (a dangling one) shares the best's short hash: the row still names the best,
    which is on REF. Two commits off REF sharing one: the row says 'ambiguous', not 'gone'."""
    g = greedy_repo(tmp_path, results=None)
    k2 = g.sha["k2"]
    tree_d1 = g.repo.commit(g.sha["d1"]).tree.hexsha
    twin = store_commit_starting_with(g.repo, k2[:4], tree_d1, g.sha["k1"], "twin")
    assert twin != k2 and twin[:4] == k2[:4]
    on_ref = g.repo.git.rev_list("HEAD").split()
    a = next(sha for sha in (store_commit_starting_with(g.repo, "", tree_d1, g.sha["k1"], f"lost idea {n}")
                             for n in range(50)) if all(r[:4] != sha[:4] for r in on_ref))
    b = store_commit_starting_with(g.repo, a[:4], tree_d1, g.sha["k2"], "other lost idea")
    (g.path / "results.tsv").write_text(plain_rows(g).replace(g.short("k2"), k2[:4])
                                        + rows_tsv([(a[:4], "0.991", "discard", "one of two")]))
    plan = seed_from_repo(str(g.path))
    assert plan.code == g.code["k2"] and plan.parent_key == k2 and plan.imported_val_bpb == pytest.approx(0.985)
    h = {item.key: item for item in plan.history}
    assert h[k2].status == "keep" and twin not in h
    odd = h[a[:4]]
    assert odd.status == "discard" and "is ambiguous (2 commits start with it)" in odd.hypothesis
    assert "no longer exists" not in odd.hypothesis and b not in h
    assert f"results.tsv names '{a[:4]}', which is ambiguous (2 commits start with it)" in summarize_plan(plan)


# ----- 15d: columns by the header's names ------------------------------------------------------------

def test_an_extra_column_is_not_glued_to_the_description() -> None:
    text = ("commit\tval_bpb\tmemory_gb\tstatus\tdescription\tseconds\n"
            "a1b2c3d\t0.99\t44.0\tkeep\traise LR\t301.5\n"
            "b2c3d4e\t0.98\t44.0\tdiscard\tGeLU\t299.0\n")
    rows = parse_results_tsv(text)
    assert [r.description for r in rows] == ["raise LR", "GeLU"]
    moved = parse_results_tsv("status\tcommit\tdescription\tval_bpb\tnote\n"
                              "keep\ta1b2c3d\traise LR\t0.99\tfirst try\n")
    assert (moved[0].commit, moved[0].status, moved[0].val_bpb, moved[0].description) == ("a1b2c3d", "keep", 0.99, "raise LR")
    # without extra columns, tabs inside a last-column description still belong to it
    assert parse_results_tsv(HEADER + "a1b2c3d\t0.99\t44.0\tkeep\tswitch to\tGeLU\n")[0].description == "switch to GeLU"


def test_an_extra_column_in_a_greedy_repo(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path, results=None)
    (g.path / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\tseconds\n" + "".join(
        f"{g.short(n)}\t{v}\t40.0\tkeep\t{d}\t300.{i}\n" for i, (n, v, d) in enumerate(
            [("base", "0.997", "baseline"), ("k1", "0.99", "raise LR"), ("k2", "0.985", "depth 6")])))
    plan = seed_from_repo(str(g.path))
    assert plan.hypothesis.endswith(": depth 6")
    assert [h.hypothesis for h in plan.history][:2] == [f"baseline [{g.short('base')}]", f"raise LR [{g.short('k1')}]"]


# ----- 15f: a fresh clone ---------------------------------------------------------------------------

def test_a_branch_only_on_the_remote_of_a_fresh_clone(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path, results="committed")
    g.repo.git.checkout("-q", "master")
    clone = gitpython.Repo.clone_from(str(g.path), str(tmp_path / "clone"))
    plan = seed_from_repo(f"{tmp_path / 'clone'}@autoresearch/mar5")
    assert plan.code == g.code["k2"] and "@origin/autoresearch/mar5: depth 6" in plan.hypothesis
    summary = summarize_plan(plan)
    assert "'autoresearch/mar5' is not a local branch" in summary and "read the remote branch origin/autoresearch/mar5" in summary
    assert "read origin/autoresearch/mar5:results.tsv" in summary
    clone.create_remote("mirror", str(g.path)).fetch()
    with pytest.raises(GitError, match=r"not a branch, tag or commit in .*clone; the remote branches "
                                       r"origin/autoresearch/mar5 and mirror/autoresearch/mar5 exist: write .*@origin/"):
        seed_from_repo(f"{tmp_path / 'clone'}@autoresearch/mar5")


# ----- 15g: an evo run's rejected history -------------------------------------------------------------

def test_evo_run_brings_its_rejected_and_failed_candidates(tmp_path: Path, evo_archive) -> None:
    archive, code = evo_archive
    run = archive.find_run("r")
    one = archive.candidate(run.id, 1)
    archive.add_candidate(run.id, code=train_code(0.02, 80), operator="mutate", parent_id=one.id, state=FAIL,
                          fail_reason="oom", hypothesis="depth 80")
    plan = seed_from_evo(archive, "evo:r")
    h = {item.key: item for item in plan.history}
    assert h["evo:r:3"].status == "discard" and h["evo:r:3"].parent_key == "evo:r:1" and h["evo:r:3"].code == code[3]
    assert h["evo:r:6"].status == "crash" and h["evo:r:6"].parent_key == "evo:r:1" and "FAIL oom" in h["evo:r:6"].hypothesis
    assert h["evo:r:4"].status == "keep" and "crossover of #1 and #2" in h["evo:r:4"].hypothesis
    assert plan.parent_key == "evo:r:4" and plan.code == code[4]
    assert "history: 5 kept, 1 discarded, 1 crashed" in summarize_plan(plan)
    target, new_run = seeded_archive(tmp_path, plan)
    cands = target.candidates(new_run.id)
    number = {c.id: c.number for c in cands}
    assert [(c.state, c.accepted, number.get(c.parent_id)) for c in cands] == [
        (COMPLETE, True, None), (COMPLETE, True, 0), (COMPLETE, True, 0), (COMPLETE, False, 1), (COMPLETE, True, 1),
        (COMPLETE, True, 2), (FAIL, False, 1), ("WAITING", None, 4)]


# ----- 14: --seed-train with --seed-from ---------------------------------------------------------------

def test_seed_train_with_seed_from_keeps_the_history(tmp_path: Path, evo_archive) -> None:
    from evo.cli.app import _seed_plan

    g = greedy_repo(tmp_path)
    here = tmp_path / "cpu_train.py"
    here.write_text(train_code(0.02, 6, "DEVICE = 'cpu'\n"))
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    imported = _seed_plan(RunConfig(name="a", seed_from=str(g.path), seed_train=None), archive)
    plan = _seed_plan(RunConfig(name="b", seed_from=str(g.path), seed_train=str(here)), archive)
    assert imported.code == g.code["k2"] and plan.code == here.read_text()
    assert plan.history == imported.history and plan.parent_key == g.sha["k2"]
    assert plan.operator == "seed" and plan.imported_val_bpb is None
    summary = summarize_plan(plan)
    assert f"seed: {here} (--seed-train), on top of the imported best {g.short('k2')}" in summary
    assert "history: 4 kept" in summary and f"--seed-train {here} is the seed instead of the imported best" in summary
    (tmp_path / "x").mkdir()
    target, run = seeded_archive(tmp_path / "x", plan)
    seed = target.candidate_by_id(target.run_by_id(run.id).seed_id)
    assert seed.operator == "seed" and target.candidate_by_id(seed.parent_id).hypothesis.startswith("depth 6")
    # from another evo run: the seed file hangs off that run's best, imported as history
    other = with_seed_file(seed_from_evo(evo_archive[0], "evo:r"), "X = 1\n", "f.py")
    assert other.parent_key == "evo:r:4" and "evo:r:4" in keys(other) and other.code == "X = 1\n"


def test_cli_seed_train_given_with_seed_from(tmp_path: Path) -> None:
    """`evo run --seed-from REPO --seed-train FILE`: the greedy history stays, FILE is the seed
    measured here (child of the imported best); without --seed-train the imported best is."""
    src = (SURROGATE / "train.py").read_text()
    repo = new_repo(tmp_path / "ar")
    commit_file(repo, "train.py", src, "base")
    k1 = commit_file(repo, "train.py", src.replace("X1 = 1.0", "X1 = 1.5"), "x1")
    (tmp_path / "ar" / "results.tsv").write_text(HEADER + f"baseline\t1.0\t1\tkeep\tbaseline\n{k1[:7]}\t0.9\t1\tkeep\tx1 up\n")
    mine = tmp_path / "mine.py"
    mine.write_text(src.replace("X2 = 1.0", "X2 = 1.25"))
    env = {**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"}
    run = subprocess.run([sys.executable, "-m", "evo", "run", "--name", "g", "--seed-from", str(tmp_path / "ar"),
                          "--seed-train", str(mine), "--prepare", str(SURROGATE / "prepare.py"), "--preset", "smoke",
                          "--operator", "tweak", "--max-candidates", "1", "--replicates", "1", "--temperature", "0.001"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"seed: {mine} (--seed-train), on top of the imported best {k1[:7]}" in run.stdout
    assert "history: 2 kept" in run.stdout and f"read {tmp_path / 'ar' / 'results.tsv'} (2 row(s))" in run.stdout
    archive = Archive(env["EVO_STORAGE"])
    r = archive.find_run("g")
    cands = archive.candidates(r.id)
    seed = archive.candidate_by_id(r.seed_id)
    assert archive.code(seed.code_hash) == mine.read_text() and seed.operator == "seed"
    assert archive.candidate_by_id(seed.parent_id).hypothesis == f"x1 up [{k1[:7]}]"
    assert [c.operator for c in cands[:2]] == ["import", "import"]


# ----- 16: the report of a seeded run -----------------------------------------------------------------

def seeded_run_rows(tmp_path: Path):
    """A real archive seeded from greedy_repo, with the seed measured and accepted."""
    g = greedy_repo(tmp_path)
    archive, run = seeded_archive(tmp_path, seed_from_repo(str(g.path)))
    accept_measured_seed(archive, run.id, archive.run_by_id(run.id).seed_id)
    return archive.candidates(run.id), archive.run_by_id(run.id).seed_id


def test_progress_of_a_seeded_run_continues_the_greedy_runs_story(tmp_path: Path) -> None:
    cands, seed_id = seeded_run_rows(tmp_path)
    lin = data.lineage(cands, seed_id)
    seed = lin.seed
    assert cands[seed].operator == "import" and seed == len(cands) - 1
    prog = data.progress(cands, lin)
    assert prog.seed == seed and prog.points["accepted"] == [], "the seed is a point of its own, not a child"
    history = [i for i in range(len(cands)) if i != seed]
    assert sorted(sum(prog.history.values(), [])) == history
    assert [cands[i].imported_val_bpb for i in prog.history["accepted"]][-1] is not None
    assert [v for _, v, _ in prog.history_best] == sorted({v for _, v, _ in prog.history_best}, reverse=True), \
        "the imported run's running best only goes down"
    assert prog.best_number == [(cands[seed].number, pytest.approx(0.9861), seed)] and prog.improvements == [seed]
    fig = figures.progress(cands, lin, prog, "number", None)
    names = [t["name"] for t in fig["data"]]
    assert "imported run's best" in names and "running best" in names and "seed" in names
    kept = next(t for t in fig["data"] if t["name"].startswith("imported: kept"))
    assert kept["customdata"] == prog.history["accepted"] and kept["x"] == [cands[i].number for i in kept["customdata"]]
    best_line = next(t for t in fig["data"] if t["name"] == "imported run's best")
    assert best_line["x"][-1] == cands[seed].number, "the greedy run's best reaches the seed, where evo takes over"
    assert any(a["text"] == "seed" for a in fig["layout"]["annotations"])
    by_time = figures.progress(cands, lin, prog, "time", None)
    assert not any(t["name"].startswith("imported") for t in by_time["data"]), "history has no time in this run"
    assert any("imported candidates: on the candidate-number view" in a["text"] for a in by_time["layout"]["annotations"])


def test_lineage_draws_imported_history_in_a_colour_of_its_own(tmp_path: Path) -> None:
    cands, seed_id = seeded_run_rows(tmp_path)
    lin = data.lineage(cands, seed_id)
    history = [i for i in range(len(cands)) if i != lin.seed]
    assert [lin.role[i] for i in history] == ["history"] * len(history)
    fig = figures.lineage(cands, lin, "generation", None)
    traces = {t["name"]: t for t in fig["data"]}
    imported = traces[f"imported ({len(history)}, measured elsewhere)"]
    assert imported["customdata"] == history and imported["marker"]["color"] == figures.COLORS["imported"]
    assert imported["y"][:4] == [cands[i].imported_val_bpb for i in history[:4]], "at the value measured where it ran"
    symbols = imported["marker"]["symbol"]
    assert symbols.count("square") == sum(1 for i in history if cands[i].accepted) and "x-thin-open" in symbols
    assert not any(name.startswith("failed") for name in traces), "the crashed import is history, not a failure here"
    assert traces["seed (accepted)"]["customdata"] == [lin.seed]
