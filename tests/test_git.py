"""Git import and export on real repositories built in a temp folder that mimic a greedy
autoresearch run: a baseline commit, kept commits, discarded and crashed commits reset away,
results.tsv untracked (or committed), a tip that is not the best."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import git as gitpython
import pytest

from evo.launch import apparatus
from evo.storage import COMPLETE, FAIL, Archive
from evo.config import RunConfig
from evo.engine.loop import Engine
from evo.engine.seeding import SeedError, SeedPlan, seed_from_evo, summarize_plan
from evo.gitio import GitError
from evo.gitio.export import export_candidate, export_lineage
from evo.gitio.greedy import seed_from, seed_from_repo
from evo.gitio.results_tsv import parse_results_tsv
from evo.launch.runner import Slot

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = ROOT / "tests" / "fixtures" / "surrogate"
HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


def train_code(lr: float, depth: int, extra: str = "") -> str:
    return f"LR = {lr}\nDEPTH = {depth}\n{extra}print('val_bpb:', LR * DEPTH)\n"


def new_repo(path: Path) -> gitpython.Repo:
    repo = gitpython.Repo.init(path, initial_branch="master")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Agent")
        cw.set_value("user", "email", "agent@example.com")
        cw.set_value("commit", "gpgsign", "false")
    return repo


def commit_file(repo: gitpython.Repo, name: str, text: str, message: str) -> str:
    (Path(repo.working_tree_dir) / name).write_text(text)
    repo.git.add(name)
    repo.git.commit("-q", "-m", message)
    return repo.head.commit.hexsha


@dataclass
class Greedy:
    repo: gitpython.Repo
    path: Path
    sha: dict[str, str] = field(default_factory=dict)
    code: dict[str, str] = field(default_factory=dict)

    def short(self, name: str) -> str:
        return self.sha[name][:7]

    def status(self) -> tuple[str, str, bytes]:
        """What a user sees: porcelain status, HEAD, and the index file's bytes."""
        return (self.repo.git.status("--porcelain", "--untracked-files=all"), self.repo.head.commit.hexsha,
                (Path(self.repo.git_dir) / "index").read_bytes())


def greedy_repo(tmp_path: Path, *, results: str | None = "untracked", dirty: bool = False) -> Greedy:
    """master: prepare.py + train.py (baseline). Branch autoresearch/mar5:
    k1 keep 0.990, d1 discard (reset away), k2 keep 0.985 (best), c1 crash (reset away),
    k3 keep 0.987 (tip, not the best); results.tsv also has a duplicate row, a `baseline` row and a
    row whose commit never existed."""
    path = tmp_path / "autoresearch"
    repo = new_repo(path)
    g = Greedy(repo, path)
    commit_file(repo, "prepare.py", "MAX_SEQ_LEN = 64\n", "prepare")
    g.code["base"] = train_code(0.01, 8)
    g.sha["base"] = commit_file(repo, "train.py", g.code["base"], "initial train.py")
    repo.git.checkout("-q", "-b", "autoresearch/mar5")

    def attempt(name: str, code: str, message: str, kept: bool) -> None:
        g.code[name] = code
        g.sha[name] = commit_file(repo, "train.py", code, message)
        if not kept:
            repo.git.reset("-q", "--hard", "HEAD~1")

    attempt("k1", train_code(0.02, 8), "raise LR to 0.02", True)
    attempt("d1", train_code(0.02, 8, "GELU = True\n"), "switch to GeLU", False)
    attempt("k2", train_code(0.02, 6), "depth 6", True)
    attempt("c1", train_code(0.02, 64), "depth 64 (OOM)", False)
    attempt("k3", train_code(0.03, 6), "raise LR to 0.03", True)
    rng = random.Random(7)
    gone = "".join(rng.choice("0123456789abcdef") for _ in range(40))
    g.sha["gone"] = gone
    text = HEADER + "".join(f"{c}\t{v}\t{m}\t{s}\t{d}\n" for c, v, m, s, d in [
        ("baseline", "0.997900", "44.0", "keep", "baseline"),
        (g.short("k1"), "0.990000", "44.1", "keep", "raise LR to 0.02"),
        (g.short("d1"), "0.995000", "44.1", "discard", "switch to GeLU"),
        (g.short("k1"), "0.990000", "44.1", "keep", "raise LR to 0.02"),      # duplicate row
        (gone[:7], "0.999000", "44.0", "discard", "label smoothing"),        # commit never existed
        (g.short("k2"), "0.985000", "40.2", "keep", "depth 6"),
        (g.short("c1"), "0.000000", "0.0", "crash", "depth 64 (OOM)"),
        (g.short("k3"), "0.987000", "40.3", "keep", "raise LR to 0.03"),
    ])
    if results == "untracked":
        (path / "results.tsv").write_text("\n" + text.replace("\t0.985000", "\t 0.985000 ") + "\n\n")
    elif results == "committed":
        g.sha["results"] = commit_file(repo, "results.tsv", text, "results")
    if dirty:
        (path / "train.py").write_text("BROKEN = True\n")
        (path / "prepare.py").write_text("MAX_SEQ_LEN = 1\n")
        repo.git.add("prepare.py")
    return g


def keys(plan: SeedPlan) -> list[str]:
    return [h.key for h in plan.history]


# ----- results.tsv ------------------------------------------------------------------------------

def test_parse_results_tsv_tolerates_blank_lines_whitespace_and_duplicates() -> None:
    text = ("\n" + HEADER + "baseline\t0.997900\t44.0\tkeep\tbaseline\n\n"
            "  a1b2c3d \t 0.993200\t44.2\tKEEP\tincrease LR to 0.04  \n"
            "a1b2c3d\t0.993200\t44.2\tkeep\tincrease LR to 0.04\n"
            "b2c3d4e\t1.005000\t44.0\tdiscard\tswitch to GeLU\tactivation\n"
            "c3d4e5f   0.000000   0.0   crash   double model width (OOM)\n"
            + HEADER)
    rows = parse_results_tsv(text)
    assert [(r.commit, r.status) for r in rows] == [("baseline", "keep"), ("a1b2c3d", "keep"),
                                                    ("b2c3d4e", "discard"), ("c3d4e5f", "crash")]
    assert rows[0].is_baseline and rows[1].val_bpb == pytest.approx(0.9932) and rows[1].memory_gb == 44.2
    assert rows[1].description == "increase LR to 0.04"
    assert rows[2].description == "switch to GeLU activation"
    assert rows[3].val_bpb is None and rows[3].description == "double model width (OOM)"
    assert rows[3].line == 8
    assert parse_results_tsv("") == [] and parse_results_tsv(HEADER) == []


@pytest.mark.parametrize("line, message", [
    ("a1b2c3d\t0.99\n", "line 2 has 2 field"),
    ("a1b2c3d\tfast\t44.0\tkeep\tx\n", "line 2: val_bpb 'fast' is not a number"),
    ("a1b2c3d\t0.99\t44.0\tmaybe\tx\n", "line 2: status 'maybe' is not keep, discard or crash"),
    ("HEAD\t0.99\t44.0\tkeep\tx\n", "line 2: 'HEAD' is neither a commit hash nor 'baseline'"),
])
def test_parse_results_tsv_names_the_bad_line(line: str, message: str) -> None:
    with pytest.raises(GitError, match=message):
        parse_results_tsv(HEADER + line)


# ----- seeding from a greedy repository ---------------------------------------------------------

def check_greedy_plan(g: Greedy, plan: SeedPlan) -> None:
    base, k1, d1, k2, c1, k3 = (g.sha[n] for n in ("base", "k1", "d1", "k2", "c1", "k3"))
    gone = g.sha["gone"][:7]
    assert plan.code == g.code["k2"], "the seed is the best keep row, not the tip"
    assert plan.operator == "import" and plan.imported_val_bpb == pytest.approx(0.985)
    assert plan.hypothesis.startswith(f"imported {k2[:7]} from ") and plan.hypothesis.endswith(": depth 6")
    assert plan.parent_key == k2, "the seed is the re-measured child of the imported best"
    assert keys(plan) == [base, k1, k2, k3, d1, gone, c1], "kept chain (tip after the best too), then rejected rows"
    h = {item.key: item for item in plan.history}
    assert h[base].parent_key is None and h[base].val_bpb == pytest.approx(0.9979) and h[base].code == g.code["base"]
    assert h[k1].parent_key == base and h[k1].status == "keep" and h[k1].val_bpb == pytest.approx(0.99)
    assert h[k2].parent_key == k1 and h[k2].code == g.code["k2"]
    assert h[k3].parent_key == k2 and h[k3].status == "keep", "a tip after the best hangs off the best"
    assert h[d1].parent_key == k1 and h[d1].status == "discard" and h[d1].code == g.code["d1"]
    assert h[c1].parent_key == k2 and h[c1].status == "crash" and h[c1].val_bpb is None and h[c1].code == g.code["c1"]
    assert h[gone].parent_key == k1 and h[gone].code == g.code["k1"] and "no longer exists" in h[gone].hypothesis
    assert h[k1].hypothesis == f"raise LR to 0.02 [{k1[:7]}]"
    for item in plan.history:  # parents come first, as the engine needs
        assert item.parent_key is None or keys(plan).index(item.parent_key) < keys(plan).index(item.key)


def test_seed_from_greedy_repo_with_untracked_results(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path)
    before = g.status()
    plan = seed_from_repo(str(g.path))
    check_greedy_plan(g, plan)
    assert f"from {g.path}@autoresearch/mar5: depth 6" in plan.hypothesis
    assert g.status() == before
    assert "4 kept, 2 discarded, 1 crashed" in summarize_plan(plan)


def test_seed_from_committed_results_on_another_checkout_with_a_dirty_work_tree(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path, results="committed")
    g.repo.git.checkout("-q", "master")
    (g.path / "train.py").write_text("BROKEN = True\n")     # dirty, never read
    (g.path / "results.tsv").write_text(HEADER)            # a stray untracked file: REF's own results.tsv wins
    before = g.status()
    plan = seed_from_repo(f"{g.path}@autoresearch/mar5")
    check_greedy_plan(g, plan)
    assert g.sha["results"] not in keys(plan), "a commit that changed only results.tsv is not a candidate"
    assert g.status() == before


def test_dirty_work_tree_is_never_read_or_changed(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path, dirty=True)
    before = g.status()
    plan = seed_from(f"{g.path}@autoresearch/mar5")
    check_greedy_plan(g, plan)
    assert all("BROKEN" not in item.code for item in plan.history)
    assert g.status() == before


def test_full_hashes_and_a_hash_baseline_row(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path, results=None)
    (g.path / "results.tsv").write_text(HEADER + "".join(f"{g.sha[n]}\t{v}\t40.0\t{s}\t{n}\n" for n, v, s in [
        ("base", "0.997", "keep"), ("k1", "0.990", "keep"), ("k2", "0.991", "keep"), ("k3", "0.980", "keep")]))
    plan = seed_from_repo(str(g.path))
    assert plan.code == g.code["k3"] and plan.imported_val_bpb == pytest.approx(0.98)
    assert keys(plan) == [g.sha[n] for n in ("base", "k1", "k2", "k3")]


def test_without_results_tsv_the_tip_is_the_seed(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path, results=None)
    commit_file(g.repo, "README.md", "notes\n", "notes")   # the tip itself did not change train.py
    plan = seed_from_repo(str(g.path))
    assert plan.code == g.code["k3"] and plan.imported_val_bpb is None
    assert keys(plan) == [g.sha[n] for n in ("base", "k1", "k2", "k3")]
    assert plan.parent_key == g.sha["k3"] and all(h.status == "keep" and h.val_bpb is None for h in plan.history)
    assert plan.history[1].hypothesis == f"raise LR to 0.02 [{g.short('k1')}]"


def test_duplicate_rows_of_one_commit_are_merged(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path, results=None)
    (g.path / "results.tsv").write_text(HEADER + "".join(f"{c}\t{v}\t40.0\t{s}\t{d}\n" for c, v, s, d in [
        ("baseline", "0.997", "keep", "baseline"), (g.short("k1"), "0.990", "keep", "lr"),
        (g.short("k2"), "0.984", "keep", "depth"), (g.short("k2"), "0.988", "keep", "depth (rerun)"),
        (g.short("k3"), "0.985", "keep", "lr again")]))
    plan = seed_from_repo(str(g.path))
    assert plan.code == g.code["k3"], "k2's mean (0.986) loses to k3 (0.985)"
    assert [h.val_bpb for h in plan.history][2] == pytest.approx(0.986)


def test_a_kept_commit_that_no_longer_exists_cannot_be_the_best(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path, results=None)
    (g.path / "results.tsv").write_text(HEADER + "".join(f"{c}\t{v}\t40.0\tkeep\t{d}\n" for c, v, d in [
        ("baseline", "0.997", "baseline"), (g.short("k1"), "0.990", "lr"), ("0123abc", "0.950", "lost"),
        (g.short("k2"), "0.985", "depth")]))
    plan = seed_from_repo(str(g.path))
    assert plan.code == g.code["k2"]
    lost = {h.key: h for h in plan.history}["0123abc"]
    assert lost.status == "discard" and lost.parent_key == g.sha["k1"] and lost.code == g.code["k1"]
    assert "no longer exists" in lost.hypothesis and "kept in results.tsv" in lost.hypothesis


def test_only_a_baseline_row_seeds_from_the_tip(tmp_path: Path) -> None:
    g = greedy_repo(tmp_path, results=None)
    (g.path / "results.tsv").write_text(HEADER + "baseline\t0.997\t44.0\tkeep\tbaseline\n"
                                        f"{g.short('d1')}\t0.999\t44.0\tdiscard\tgelu\n")
    plan = seed_from_repo(str(g.path))
    assert plan.code == g.code["k3"] and plan.imported_val_bpb == pytest.approx(0.997)
    # no kept change resolves, so the baseline is the tip, and the discard hangs off it
    assert keys(plan) == [g.sha["k3"], g.sha["d1"]] and plan.history[1].parent_key == g.sha["k3"]


@pytest.mark.parametrize("spec, message", [
    ("{tmp}/nowhere", "does not exist"),
    ("{tmp}", "is not a git repository"),
    ("{repo}@no-such-branch", "'no-such-branch' is not a branch, tag or commit"),
    ("{repo}@", "names no ref after '@'"),
    ("", "needs REPO"),
])
def test_bad_specs_are_one_sentence(tmp_path: Path, spec: str, message: str) -> None:
    g = greedy_repo(tmp_path)
    with pytest.raises(GitError, match=message):
        seed_from_repo(spec.format(tmp=tmp_path, repo=g.path))


def test_empty_repository_and_bad_results(tmp_path: Path) -> None:
    new_repo(tmp_path / "empty")
    with pytest.raises(GitError, match="has no commits"):
        seed_from_repo(str(tmp_path / "empty"))
    g = greedy_repo(tmp_path)
    (g.path / "results.tsv").write_text(HEADER + "zzz\t1\t1\tkeep\tx\n")
    with pytest.raises(GitError, match=r"results.tsv: results.tsv line 2"):
        seed_from_repo(str(g.path))


def seeded_archive(tmp_path: Path, plan: SeedPlan):
    """What `evo run --seed-from` does before the first evaluation: the engine archives the plan."""
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    config = RunConfig(name="g", preset="smoke", temperature=0.001, replicates=1).validate()
    run = archive.create_run("g", config.to_dict())
    engine = Engine(archive, run, config, None, [Slot("cpu")], apparatus.load(SURROGATE / "prepare.py", "smoke"), plan)
    engine._ensure_seed()
    return archive, run


def test_history_links_up_in_the_archive(tmp_path: Path) -> None:
    """The engine archives the history, then the seed as the child of the imported best."""
    g = greedy_repo(tmp_path)
    archive, run = seeded_archive(tmp_path, seed_from_repo(str(g.path)))
    cands = archive.candidates(run.id)
    number = {c.id: c.number for c in cands}
    rows = [(c.operator, number.get(c.parent_id), c.state, c.accepted, c.imported_val_bpb) for c in cands]
    assert rows == [("import", None, COMPLETE, True, pytest.approx(0.9979)),   # 0 baseline
                    ("import", 0, COMPLETE, True, pytest.approx(0.99)),        # 1 k1
                    ("import", 1, COMPLETE, True, pytest.approx(0.985)),       # 2 k2, the best
                    ("import", 2, COMPLETE, True, pytest.approx(0.987)),       # 3 k3, the tip
                    ("import", 1, COMPLETE, False, pytest.approx(0.995)),      # 4 d1
                    ("import", 1, COMPLETE, False, pytest.approx(0.999)),      # 5 gone
                    ("import", 2, FAIL, False, None),                          # 6 c1
                    ("import", 2, "WAITING", None, pytest.approx(0.985))]      # 7 the seed, re-measured
    assert archive.run_by_id(run.id).seed_id == cands[-1].id
    assert archive.code(cands[-1].code_hash) == g.code["k2"]


# ----- an archive to export ---------------------------------------------------------------------

def add(archive: Archive, run_id: int, code: str, bpb: float | None, accepted: bool, *, parent=None, parent2=None,
        operator: str = "mutate", hypothesis: str = "", is_seed: bool = False):
    cand = archive.add_candidate(run_id, code=code, operator=operator, parent_id=parent.id if parent else None,
                                 parent2_id=parent2.id if parent2 else None, hypothesis=hypothesis,
                                 rationale=f"because {hypothesis}", is_seed=is_seed)
    for r, value in enumerate([bpb, bpb + 0.0002] if bpb is not None else []):
        ev = archive.queue_evaluation(run_id, cand.id, r, 42 + r)
        archive.start_evaluation(ev.id, "cpu", "/tmp/x")
        archive.finish_evaluation(ev.id, state=COMPLETE, fail_reason=None, detail="", metrics={"val_bpb": value},
                                  curve=[], returncode=0, wall_seconds=1.0, harness_seconds=0.1, log_tail="")
    archive.decide(cand.id, accepted=accepted, temperature=0.001, probability=0.5 if accepted else 0.1, delta=None,
                   competitor_id=None, leaving=[], reason="test")
    return archive.candidate_by_id(cand.id)


@pytest.fixture
def evo_archive(tmp_path: Path) -> tuple[Archive, dict]:
    """0 seed; 1, 2 from 0; 3 from 1 (rejected); 4 crossover of 1 and 2 (the best); 5 from 2."""
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db")
    run = archive.create_run("r", RunConfig(name="r", preset="smoke").validate().to_dict())
    c = {}
    c[0] = add(archive, run.id, train_code(0.01, 8), 1.000, True, operator="seed", hypothesis="seed", is_seed=True)
    c[1] = add(archive, run.id, train_code(0.02, 8), 0.990, True, parent=c[0], hypothesis="raise LR")
    c[2] = add(archive, run.id, train_code(0.01, 6), 0.995, True, parent=c[0], hypothesis="depth 6")
    c[3] = add(archive, run.id, train_code(0.05, 8), 1.100, False, parent=c[1], hypothesis="LR way up")
    c[4] = add(archive, run.id, train_code(0.02, 6), 0.980, True, parent=c[1], parent2=c[2], operator="crossover",
               hypothesis="LR and depth together")
    c[5] = add(archive, run.id, train_code(0.01, 4), 0.993, True, parent=c[2], hypothesis="depth 4")
    return archive, {n: archive.code(x.code_hash) for n, x in c.items()}


def target_repo(tmp_path: Path) -> Greedy:
    """A user's checkout of the evo project with local edits: exports must not disturb any of it."""
    path = tmp_path / "project"
    repo = new_repo(path)
    g = Greedy(repo, path)
    commit_file(repo, "prepare.py", "MAX_SEQ_LEN = 64\n", "prepare")
    g.sha["head"] = commit_file(repo, "train.py", train_code(0.01, 8), "seed")
    (path / "train.py").write_text("LOCAL = 1\n")           # unstaged edit
    (path / "notes.txt").write_text("mine\n")               # untracked
    (path / "prepare.py").write_text("MAX_SEQ_LEN = 2\n")
    repo.git.add("prepare.py")                              # staged edit
    return g


def test_export_candidate_round_trips_and_leaves_the_checkout_alone(tmp_path: Path, evo_archive) -> None:
    archive, code = evo_archive
    g = target_repo(tmp_path)
    before = g.status()
    sha = export_candidate(archive, "r", "best", "evo/best", g.path, force=False)
    assert g.status() == before
    commit = g.repo.commit("evo/best")
    assert commit.hexsha == sha and [p.hexsha for p in commit.parents] == [g.sha["head"]]
    assert (commit.tree / "train.py").data_stream.read().decode() == code[4]
    assert (commit.tree / "prepare.py").data_stream.read().decode() == "MAX_SEQ_LEN = 64\n", "HEAD's files, not the index"
    message = commit.message
    assert message.splitlines()[0] == "LR and depth together"
    assert "val_bpb 0.980100 ± 0.000141 over 2 evaluation(s)" in message and "because LR and depth together" in message
    lineage = message[message.index("Lineage"):]
    assert [line.split()[0] for line in lineage.splitlines()[1:4]] == ["#0", "#1", "#4"]
    assert "(with #2)" in lineage and "Evo-Candidate: 4" in message
    # round trips: the branch seeds an identical run, with or without the greedy results.tsv around
    assert seed_from_repo(f"{g.path}@evo/best").code == code[4]
    assert seed_from_evo(archive, "evo:r").code == code[4]
    assert seed_from(f"{g.path}@{sha[:10]}", archive).code == code[4]


def test_export_refuses_an_existing_branch_without_force(tmp_path: Path, evo_archive) -> None:
    archive, code = evo_archive
    g = target_repo(tmp_path)
    export_candidate(archive, "r", "1", "evo/x", g.path, force=False)
    with pytest.raises(GitError, match="branch 'evo/x' already exists .*--force"):
        export_candidate(archive, "r", "5", "evo/x", g.path, force=False)
    sha = export_candidate(archive, "r", "5", "evo/x", g.path, force=True)
    assert g.repo.commit("evo/x").hexsha == sha
    assert seed_from_repo(f"{g.path}@evo/x").code == code[5]
    with pytest.raises(GitError, match="is checked out"):
        export_candidate(archive, "r", "5", "master", g.path, force=True)
    g.repo.git.worktree("add", "-q", str(tmp_path / "wt"), "evo/x")
    with pytest.raises(GitError, match="is checked out"):
        export_candidate(archive, "r", "5", "evo/x", g.path, force=True)
    for which, message in [("9", "no candidate number 9"), ("x", "not a candidate number")]:
        with pytest.raises(GitError, match=message):
            export_candidate(archive, "r", which, "evo/y", g.path, force=False)
    with pytest.raises(GitError, match="not a valid branch name"):
        export_candidate(archive, "r", "best", "bad..name", g.path, force=False)
    with pytest.raises(GitError, match="no run named 'nope'"):
        export_candidate(archive, "nope", "best", "evo/y", g.path, force=False)
    with pytest.raises(GitError, match="is not a git repository"):
        export_candidate(archive, "r", "best", "evo/y", tmp_path / "archive", force=False)


def test_export_into_an_empty_repository_makes_a_root_commit(tmp_path: Path, evo_archive) -> None:
    archive, code = evo_archive
    repo = new_repo(tmp_path / "empty")
    sha = export_candidate(archive, None, "2", "evo/two", tmp_path / "empty", force=False)
    assert repo.commit(sha).parents == () and seed_from_repo(f"{tmp_path / 'empty'}@evo/two").code == code[2]


def test_export_lineage_writes_the_search_as_history(tmp_path: Path, evo_archive) -> None:
    archive, code = evo_archive
    g = target_repo(tmp_path)
    before = g.status()
    summary = export_lineage(archive, "r", g.path)
    assert g.status() == before
    assert summary["commits"] == 5 and summary["branch"] == "evo/r" and summary["best"]["number"] == 4
    assert summary["refs"] == ["refs/evo/r/c4", "refs/evo/r/c5"]
    sha = summary["commit_of"]
    assert set(sha) == {0, 1, 2, 4, 5}, "rejected candidate 3 is not history"
    parents = {n: [p.hexsha for p in g.repo.commit(s).parents] for n, s in sha.items()}
    assert parents == {0: [g.sha["head"]], 1: [sha[0]], 2: [sha[0]], 4: [sha[1], sha[2]], 5: [sha[2]]}
    assert g.repo.commit("evo/r").hexsha == sha[4]
    for n, s in sha.items():
        assert (g.repo.commit(s).tree / "train.py").data_stream.read().decode() == code[n]
    graph = g.repo.git.log("--graph", "--all", "--format=%s")
    assert "#4 crossover 0.980100 ± 0.000141: LR and depth together" in graph
    assert "#0 seed 1.000100 ± 0.000141: seed" in graph and "LR way up" not in graph
    assert "|\\" in graph, "the crossover is drawn as a merge"
    commit = g.repo.commit(sha[0])
    assert (commit.author.name, commit.author.email, commit.committer.name) == ("evo", "evo@localhost", "evo")
    # exporting again writes the very same commits; stale leaf refs go
    g.repo.git.update_ref("refs/evo/r/c99", sha[0])
    assert export_lineage(archive, "r", g.path) == summary
    assert g.repo.git.for_each_ref("--format=%(refname)", "refs/evo/r/").split() == ["refs/evo/r/c4", "refs/evo/r/c5"]
    assert seed_from_repo(f"{g.path}@evo/r").code == code[4]
    # a path that does not exist yet becomes a repository holding the lineage alone: the same commits
    # but the roots, which have no HEAD to sit on
    fresh = export_lineage(archive, "r", tmp_path / "new" / "lineage")
    repo = gitpython.Repo(tmp_path / "new" / "lineage")
    assert fresh["commits"] == 5 and repo.commit("evo/r").parents[0].parents[0].parents == ()
    assert (repo.commit("evo/r").tree / "train.py").data_stream.read().decode() == code[4]
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("not a repository")
    with pytest.raises(GitError, match="is not a git repository"):  # a folder with files is never made one
        export_lineage(archive, "r", tmp_path / "stuff")


def test_seed_from_evo_carries_the_ancestors(tmp_path: Path, evo_archive) -> None:
    archive, code = evo_archive
    plan = seed_from_evo(archive, "evo:r")
    assert plan.code == code[4] and plan.imported_val_bpb == pytest.approx(0.9801)
    assert plan.hypothesis == "from evo run r #4: LR and depth together"
    assert keys(plan) == [f"evo:r:{n}" for n in range(6)] and plan.parent_key == "evo:r:4", "the whole run; #4 imported too"
    assert plan.history[1].parent_key == "evo:r:0" and [h.status for h in plan.history].count("keep") == 5
    plan5 = seed_from_evo(archive, "evo:r:5")
    assert plan5.code == code[5] and plan5.parent_key == "evo:r:5" and keys(plan5) == keys(plan)
    for spec, message in [("evo:nope", "no run named 'nope'"), ("evo:r:9", "no candidate number 9"), ("evo:", "is not evo:RUN")]:
        with pytest.raises(SeedError, match=message):
            seed_from_evo(archive, spec)


def accept_measured_seed(archive: Archive, run_id: int, seed_id: int, val_bpb: float = 0.9861) -> None:
    """Record the seed's first evaluation as COMPLETE and accept it, as the engine would."""
    ev = archive.evaluations(run_id, seed_id)[0]
    archive.start_evaluation(ev.id, "cpu", "/tmp/x")
    archive.finish_evaluation(ev.id, state=COMPLETE, fail_reason=None, detail="", metrics={"val_bpb": val_bpb},
                              curve=[], returncode=0, wall_seconds=1.0, harness_seconds=0.1, log_tail="")
    archive.decide(seed_id, accepted=True, temperature=0.001, probability=1.0, delta=None, competitor_id=None,
                   leaving=[], reason="seed")


def test_greedy_import_exports_as_a_lineage(tmp_path: Path) -> None:
    """Seeded from a greedy repo, a run's lineage export shows the greedy keeps below the seed."""
    g = greedy_repo(tmp_path)
    archive, run = seeded_archive(tmp_path, seed_from_repo(str(g.path)))
    target = target_repo(tmp_path)
    summary = export_lineage(archive, "g", target.path)
    assert summary["commits"] == 4 and sorted(summary["commit_of"]) == [0, 1, 2, 3]  # keeps only; seed undecided
    subjects = target.repo.git.log("--format=%s", "evo/g").splitlines()
    assert subjects[0].startswith("#2 import 0.985000 (imported): depth 6")
    assert seed_from_repo(f"{target.path}@evo/g").code == g.code["k2"]
    # once the seed is measured and accepted, it is the re-measured child of the imported best
    seed = archive.candidates(run.id)[-1]
    accept_measured_seed(archive, run.id, seed.id)
    summary = export_lineage(archive, "g", target.path)
    sha = summary["commit_of"]
    assert summary["best"]["number"] == 7 and [p.hexsha for p in target.repo.commit(sha[7]).parents] == [sha[2]]
    assert summary["refs"] == ["refs/evo/g/c3", "refs/evo/g/c7"]
    assert "Evo-Imported-Val-Bpb: 0.985000" in target.repo.commit("evo/g").message
    assert seed_from_repo(f"{target.path}@evo/g").code == g.code["k2"]


def test_a_greedy_repo_seeds_a_surrogate_run_and_its_result_goes_back_to_git(tmp_path: Path) -> None:
    """End to end with the engine and real (surrogate) evaluations: greedy repo -> evo run -> git."""
    from evo.storage import FINISHED
    from evo.operators import TweakOperator

    src = (SURROGATE / "train.py").read_text()
    repo = new_repo(tmp_path / "ar")
    commit_file(repo, "prepare.py", "MAX_SEQ_LEN = 64\n", "prepare")
    commit_file(repo, "train.py", src, "base")
    k1 = commit_file(repo, "train.py", src.replace("X1 = 1.0", "X1 = 1.5"), "x1")
    d1 = commit_file(repo, "train.py", src.replace("X2 = 1.0", "X2 = 3.0"), "x2")
    repo.git.reset("-q", "--hard", "HEAD~1")
    (tmp_path / "ar" / "results.tsv").write_text(HEADER + f"baseline\t1.0\t1\tkeep\tbaseline\n"
                                                 f"{k1[:7]}\t0.9\t1\tkeep\tx1 up\n{d1[:7]}\t0.95\t1\tdiscard\tx2 up\n")
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db")
    cfg = RunConfig(name="s", preset="smoke", temperature=0.001, replicates=2, slots=1, max_candidates=3,
                    population=2).validate()
    run = archive.create_run("s", cfg.to_dict())
    engine = Engine(archive, run, cfg, TweakOperator(), [Slot("cpu")],
                    apparatus.load(SURROGATE / "prepare.py", "smoke"), seed_from_repo(str(tmp_path / "ar")))
    assert engine.execute() == FINISHED
    cands = archive.candidates(run.id)
    assert [c.operator for c in cands[:4]] == ["import"] * 4
    seed = cands[3]
    assert seed.id == archive.run_by_id(run.id).seed_id and seed.parent_id == cands[1].id
    # two replicates, and the final re-measure's when it is one of the top members
    assert seed.n_evals >= 2 and seed.val_bpb is not None and seed.imported_val_bpb == pytest.approx(0.9)
    target = new_repo(tmp_path / "proj")
    commit_file(target, "prepare.py", "MAX_SEQ_LEN = 64\n", "prepare")
    summary = export_lineage(archive, "s", tmp_path / "proj")
    assert {0, 1, 3} <= set(summary["commit_of"]) and 2 not in summary["commit_of"]
    best = archive.candidate(run.id, summary["best"]["number"])
    export_candidate(archive, "s", "best", "evo/best", tmp_path / "proj", force=False)
    assert seed_from_repo(f"{tmp_path / 'proj'}@evo/best").code == archive.code(best.code_hash)
    assert seed_from_repo(f"{tmp_path / 'proj'}@evo/s").code == archive.code(best.code_hash)


def test_cli_seed_from_greedy_repo_then_export(tmp_path: Path) -> None:
    """The commands a user types: evo run --seed-from, evo candidates, evo export --branch / --lineage."""
    import os
    import subprocess
    import sys

    src = (SURROGATE / "train.py").read_text()
    repo = new_repo(tmp_path / "ar")
    commit_file(repo, "train.py", src, "base")
    k1 = commit_file(repo, "train.py", src.replace("X1 = 1.0", "X1 = 1.5"), "x1")
    (tmp_path / "ar" / "results.tsv").write_text(HEADER + f"baseline\t1.0\t1\tkeep\tbaseline\n{k1[:7]}\t0.9\t1\tkeep\tx1 up\n")
    env = {**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"}

    def evo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "evo", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    run = evo("run", "--name", "g", "--seed-from", str(tmp_path / "ar"), "--prepare", str(SURROGATE / "prepare.py"),
              "--preset", "smoke", "--operator", "tweak", "--max-candidates", "3", "--replicates", "2")
    assert run.returncode == 0, run.stderr
    assert "seed: imported" in run.stdout and "history: 2 kept" in run.stdout
    table = evo("candidates", "-f", "tsv").stdout.splitlines()
    assert table[1].split("\t")[1:4] == ["1.000000", "0.0", "keep"] and table[2].split("\t")[3] == "keep"
    bad = evo("run", "--name", "h", "--seed-from", str(tmp_path / "nope"), "--operator", "tweak")
    assert bad.returncode == 2 and "does not exist" in bad.stderr

    project = new_repo(tmp_path / "proj")
    commit_file(project, "prepare.py", "MAX_SEQ_LEN = 64\n", "prepare")
    before = project.head.commit.hexsha
    exported = evo("export", "best", "--branch", "evo/best", "--repo", str(tmp_path / "proj"))
    assert exported.returncode == 0, exported.stderr
    again = evo("export", "best", "--branch", "evo/best", "--repo", str(tmp_path / "proj"))
    assert again.returncode == 2 and "--force" in again.stderr
    lineage = evo("export", "--lineage", "g", "--repo", str(tmp_path / "proj"))
    assert lineage.returncode == 0, lineage.stderr
    graph = project.git.log("--graph", "--all", "--format=%s")
    assert "x1 up" in graph
    assert project.head.commit.hexsha == before, "the user's checkout is untouched"
    # results.tsv's commit column: the exported commit of every candidate in the lineage, the code hash of the rest
    tsv = [line.split("\t") for line in evo("candidates", "-f", "tsv", "--repo", str(tmp_path / "proj")).stdout.splitlines()[1:]]
    commit_of = {}
    for sha in project.git.log("--format=%H", "--all").split():
        trailers = project.git.log("-1", "--format=%(trailers:key=Evo-Candidate,valueonly)", sha).strip()
        if trailers:
            commit_of[int(trailers)] = sha[:7]
    archive = Archive(env["EVO_STORAGE"], writer=False)
    rows = [c for c in archive.candidates(archive.find_run("g").id) if c.state in ("COMPLETE", "FAIL")]
    assert len(tsv) == len(rows) and commit_of
    for row, c in zip(tsv, rows):
        assert row[0] == commit_of.get(c.number, c.code_hash[:7]), (row, c.number)
    assert sum(row[0] in commit_of.values() for row in tsv) == len(commit_of)
    unexported = evo("candidates", "-f", "tsv", "--repo", str(tmp_path / "ar")).stdout.splitlines()[1:]
    assert [line.split("\t")[0] for line in unexported] == [c.code_hash[:7] for c in rows], "not exported there"
    assert evo("export", "best").returncode == 2  # no target given
