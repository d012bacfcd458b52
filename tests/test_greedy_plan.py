"""The greedy-import planner on hand-built commit graphs: no git, no repository, only the rules
(evo.gitio.greedy's docstring) applied to a GreedyRun."""

from __future__ import annotations

import hashlib

import pytest

from evo.engine.seeding import UNRECORDED, ImportPlan
from evo.gitio import GitError
from evo.gitio.greedy_plan import CommitInfo, GreedyRun, plan_import
from evo.gitio.results_tsv import parse_results_tsv

HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
SAME = object()  # a commit that leaves train.py as its parent had it


class Graph:
    """Commits by name; each sha is made from the name, each train.py blob id from its text."""

    def __init__(self) -> None:
        self.sha: dict[str, str] = {}
        self.commits: dict[str, CommitInfo] = {}
        self.code: dict[str, str] = {}

    def add(self, name: str, *parents: str, train: object = None, message: str | None = None) -> str:
        sha = hashlib.sha1(name.encode()).hexdigest()
        parent_shas = tuple(self.sha[p] for p in parents)
        if train is SAME:
            train = self.code.get(parent_shas[0])
        if train is None:
            train = f"# {name}\n"
        blob = hashlib.sha1(train.encode()).hexdigest() if train is not False else None
        self.sha[name] = sha
        self.commits[sha] = CommitInfo(sha, parent_shas, message or f"{name} subject\n\nbody", blob)
        if blob is not None:
            self.code[sha] = train
        return sha

    def short(self, name: str) -> str:
        return self.sha[name][:7]

    def run(self, tip: str, order: list[str], rows: list[tuple[str, str, str, str]] | None,
            matches: dict[str, tuple[str, ...]] | None = None) -> GreedyRun:
        """rows: (name or short hash or 'baseline', val_bpb, status, description); a name becomes
        its short hash, which names that commit unless `matches` says otherwise."""
        text = HEADER + "".join(f"{self.short(c) if c in self.sha else c}\t{v}\t1.0\t{s}\t{d}\n"
                                for c, v, s, d in rows or [])
        found = {self.short(c): (self.sha[c],) for c, *_ in rows or [] if c in self.sha}
        found.update(matches or {})
        return GreedyRun(origin="repo@run", ref_name="run", tip=self.sha[tip], rows=tuple(parse_results_tsv(text)),
                         commits=self.commits, code=self.code, matches=found, order=[self.sha[n] for n in order])


def keys(g: Graph, plan: ImportPlan) -> list[str]:
    names = {sha: name for name, sha in g.sha.items()}
    return [names.get(h.key, h.key) for h in plan.history]


def by_name(g: Graph, plan: ImportPlan) -> dict:
    names = {sha: name for name, sha in g.sha.items()}
    return {names.get(h.key, h.key): h for h in plan.history}


def greedy_graph() -> Graph:
    """base -> k1 -> k2 -> k3 (the tip); d1 was tried on k1 and c1 on k2, both reset away."""
    g = Graph()
    g.add("base")
    g.add("k1", "base")
    g.add("d1", "k1")
    g.add("k2", "k1")
    g.add("c1", "k2")
    g.add("k3", "k2")
    return g


ORDER = ["base", "k1", "d1", "k2", "c1", "k3"]
ROWS = [("baseline", "0.997", "keep", "baseline"), ("k1", "0.990", "keep", "lr"), ("d1", "0.995", "discard", "gelu"),
        ("k2", "0.985", "keep", "depth 6"), ("c1", "0.000000", "crash", "oom"), ("k3", "0.987", "keep", "lr again")]


def test_kept_discarded_and_crashed_rows() -> None:
    g = greedy_graph()
    plan = plan_import(g.run("k3", ORDER, ROWS))
    assert keys(g, plan) == ["base", "k1", "k2", "k3", "d1", "c1"], "the kept chain, then the rejected rows"
    h = by_name(g, plan)
    assert [(n, h[n].status, h[n].parent_key) for n in keys(g, plan)] == [
        ("base", "keep", None), ("k1", "keep", g.sha["base"]), ("k2", "keep", g.sha["k1"]),
        ("k3", "keep", g.sha["k2"]), ("d1", "discard", g.sha["k1"]), ("c1", "crash", g.sha["k2"])]
    assert h["base"].val_bpb == pytest.approx(0.997) and h["c1"].val_bpb is None
    assert h["d1"].code == g.code[g.sha["d1"]] and h["k1"].hypothesis == f"lr [{g.short('k1')}]"
    # the seed: the best keep row, re-measured as the child of its imported self
    assert plan.code == g.code[g.sha["k2"]] and plan.parent_key == g.sha["k2"]
    assert plan.imported_val_bpb == pytest.approx(0.985)
    assert plan.hypothesis == f"imported {g.short('k2')} from repo@run: depth 6"
    assert plan.notes == (f"the seed is {g.short('k2')}: the keep row with the lowest val_bpb",)


def test_a_commit_that_no_longer_exists_hangs_off_the_keep_before_it() -> None:
    g = greedy_graph()
    rows = [*ROWS[:3], ("0123abc", "0.999", "discard", "label smoothing"), ("4567def", "0.900", "keep", "lost best"),
            *ROWS[3:]]
    plan = plan_import(g.run("k3", ORDER, rows))
    h = by_name(g, plan)
    assert plan.code == g.code[g.sha["k2"]], "a keep row whose commit cannot be read is never the best"
    for key in ("0123abc", "4567def"):
        assert h[key].parent_key == g.sha["k1"] and h[key].code == g.code[g.sha["k1"]]
        assert f"{key} no longer exists; the code shown is the kept commit {g.short('k1')}" in h[key].hypothesis
    assert h["4567def"].status == "discard" and "kept in results.tsv, but the commit cannot be read" in \
        h["4567def"].hypothesis


def test_an_ambiguous_hash_is_noted_and_gets_the_code_it_was_tried_on() -> None:
    g = greedy_graph()
    rows = [*ROWS[:2], ("abcd", "0.996", "discard", "two of them"), *ROWS[3:]]
    plan = plan_import(g.run("k3", ORDER, rows, matches={"abcd": (g.sha["d1"], g.sha["c1"])}))
    item = by_name(g, plan)["abcd"]
    assert item.parent_key == g.sha["k1"] and item.code == g.code[g.sha["k1"]]
    assert "is ambiguous (2 commits start with it)" in item.hypothesis
    assert any("'abcd', which is ambiguous (2 commits start with it)" in n for n in plan.notes)


def test_a_rewritten_history_keeps_the_rows_and_marks_the_new_commits_unrecorded() -> None:
    """The run was rebased after results.tsv was written: the rows name the old commits (still in the
    repository, off REF); REF's rewritten commits are on the chain but were never accepted."""
    g = Graph()
    g.add("base")
    g.add("o1", "base", train="lr 0.02\n")
    g.add("o2", "o1", train="depth 6\n")
    g.add("r1", "base", train="lr 0.02\n")
    g.add("r2", "r1", train="depth 6\n")
    rows = [("baseline", "0.997", "keep", "baseline"), ("o1", "0.990", "keep", "lr"), ("o2", "0.985", "keep", "depth")]
    plan = plan_import(g.run("r2", ["base", "o1", "o2", "r1", "r2"], rows))
    h = by_name(g, plan)
    assert keys(g, plan) == ["base", "o1", "o2", "r1", "r2"]
    assert plan.parent_key == g.sha["o2"] and plan.code == "depth 6\n"
    assert [h[n].status for n in ("o1", "o2")] == ["keep", "keep"] and h["o2"].parent_key == g.sha["o1"]
    assert [h[n].status for n in ("r1", "r2")] == [UNRECORDED, UNRECORDED]
    assert h["r1"].parent_key == g.sha["base"] and h["r2"].parent_key == g.sha["r1"]
    assert h["r2"].hypothesis == f"r2 subject [{g.short('r2')}] (not in results.tsv: not kept)"
    assert "2 commit(s) on run changed train.py but are not in results.tsv" in plan.notes[1]


def test_a_branch_holding_the_best_joins_the_chain_at_its_fork() -> None:
    """REF is master (base -> k1 -> m1); the best was kept on a side branch from k1 (b1 -> b2), with a
    commit that touched only README in between (not on the chain: train.py unchanged)."""
    g = Graph()
    g.add("base")
    g.add("k1", "base")
    g.add("b1", "k1")
    g.add("readme", "b1", train=SAME)
    g.add("b2", "readme")
    g.add("m1", "k1")
    rows = [("baseline", "1.0", "keep", "baseline"), ("k1", "0.99", "keep", "lr"), ("b1", "0.98", "keep", "side"),
            ("b2", "0.97", "keep", "side best"), ("m1", "0.985", "keep", "master")]
    plan = plan_import(g.run("m1", ["base", "k1", "b1", "readme", "b2", "m1"], rows))
    h = by_name(g, plan)
    assert keys(g, plan) == ["base", "k1", "b1", "b2", "m1"]
    assert h["b2"].parent_key == g.sha["b1"] and h["b1"].parent_key == g.sha["k1"] and h["m1"].parent_key == g.sha["k1"]
    assert plan.parent_key == g.sha["b2"] and all(item.status == "keep" for item in plan.history)


def test_a_merge_follows_first_parents() -> None:
    g = Graph()
    g.add("base")
    g.add("k1", "base")
    g.add("side", "base")
    g.add("merge", "k1", "side")
    rows = [("baseline", "1.0", "keep", "baseline"), ("k1", "0.99", "keep", "lr"), ("merge", "0.98", "keep", "merged")]
    plan = plan_import(g.run("merge", ["base", "side", "k1", "merge"], rows))
    assert keys(g, plan) == ["base", "k1", "merge"], "a merged-in commit off the first-parent line is not history"
    assert by_name(g, plan)["merge"].parent_key == g.sha["k1"]


def test_duplicate_rows_of_one_commit_count_with_their_mean() -> None:
    g = greedy_graph()
    rows = [ROWS[0], ("k1", "0.990", "keep", "lr"), ("k2", "0.984", "keep", "depth"),
            ("k2", "0.988", "keep", "depth (rerun)"), ("k3", "0.985", "keep", "lr again")]
    plan = plan_import(g.run("k3", ORDER, rows))
    assert plan.parent_key == g.sha["k3"], "k2's mean (0.986) loses to k3 (0.985)"
    assert by_name(g, plan)["k2"].val_bpb == pytest.approx(0.986)


def test_only_a_baseline_row_makes_the_tip_the_baseline() -> None:
    g = greedy_graph()
    plan = plan_import(g.run("k3", ORDER, [ROWS[0], ROWS[2]]))
    assert keys(g, plan) == ["k3", "d1"] and plan.parent_key == g.sha["k3"]
    assert by_name(g, plan)["d1"].parent_key == g.sha["k3"]
    assert plan.imported_val_bpb == pytest.approx(0.997)
    assert plan.notes == (f"the seed is {g.short('k3')}: the keep row with the lowest val_bpb",), \
        "the baseline row is the tip's keep row"


def test_tip_mode_keeps_the_train_py_commits_up_to_the_limit() -> None:
    g = greedy_graph()
    g.add("notes", "k3", train=SAME)  # the tip itself did not change train.py
    plan = plan_import(g.run("notes", [*ORDER, "notes"], None))
    assert keys(g, plan) == ["base", "k1", "k2", "k3"] and plan.parent_key == g.sha["k3"]
    assert all(h.status == "keep" and h.val_bpb is None for h in plan.history)
    assert plan.history[1].hypothesis == f"k1 subject [{g.short('k1')}]" and plan.notes == ()
    short = plan_import(g.run("notes", [*ORDER, "notes"], None), max_tip_history=2)
    assert keys(g, short) == ["k2", "k3"] and short.history[0].parent_key is None


def test_an_evo_export_at_the_tip_is_the_seed() -> None:
    g = greedy_graph()
    g.add("export", "k3", train="evo's best\n",
          message="evo #12: wider MLP\n\nEvo-Candidate: 12\nEvo-Val-Bpb: 0.951000\n")
    plan = plan_import(g.run("export", [*ORDER, "export"], ROWS))
    assert plan.parent_key == g.sha["export"] and plan.code == "evo's best\n"
    assert plan.imported_val_bpb == pytest.approx(0.951)
    assert plan.hypothesis.endswith(": evo #12: wider MLP")
    assert "an evo export at the tip, newer than the greedy rows" in plan.notes[0]
    export = by_name(g, plan)["export"]
    assert export.status == "keep" and export.parent_key == g.sha["k3"]


def test_no_train_py_anywhere_is_one_sentence() -> None:
    g = Graph()
    g.add("readme", train=False)
    with pytest.raises(GitError, match="repo@run has no train.py at its tip"):
        plan_import(g.run("readme", ["readme"], None))
    with pytest.raises(GitError, match="no results.tsv row names a commit that has one"):
        plan_import(g.run("readme", ["readme"], [("baseline", "1.0", "keep", "baseline")]))


def test_commit_info_reads_subject_and_trailers() -> None:
    info = CommitInfo("a" * 40, (), "\n  subject line  \n\nbody\nEvo-Candidate: 3\nEvo-Val-Bpb:  0.9 \nOther: x\n", None)
    assert info.subject == "subject line"
    assert info.trailers == {"Evo-Candidate": "3", "Evo-Val-Bpb": "0.9"}
    assert CommitInfo("b" * 40, (), "", None).subject == ""
