"""Counting a run: the pure rule (evo.core.counts) and one run with every outcome, counted alike by
the storage's SQL, the report's header, progress, lineage and slot figures, `evo status`, `evo
list` and `evo show`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evo.cli.app import app
from evo.core import counts
from evo.engine.seeding import Imported
from evo.report import _figures, html, write_report
from evo.storage import Archive, Candidate
from evo.storage.queries import reader, snapshot
from tests.support.synthetic import default_code, synthesize


# ----- the rule --------------------------------------------------------------------------------------

@pytest.mark.parametrize("state, accepted, imported, expected", [
    ("COMPLETE", True, False, "accepted"), ("COMPLETE", False, False, "rejected"),
    ("COMPLETE", None, False, "undecided"), ("RUNNING", None, False, "running"), ("WAITING", None, False, "waiting"),
    ("FAIL", False, False, "failed"), ("FAIL", None, False, "failed"), ("PRUNED", False, False, "pruned"),
    ("COMPLETE", True, True, "accepted"), ("COMPLETE", False, True, "rejected"), ("FAIL", False, True, "failed"),
    # a confirmation re-opens a would-be best: its first decision stands only once it is COMPLETE again
    ("RUNNING", True, False, "running"),
])
def test_one_outcome_per_candidate(state: str, accepted: bool | None, imported: bool, expected: str) -> None:
    assert counts.outcome(state, accepted, imported) == expected


def test_counts_split_seed_children_and_history() -> None:
    rows = [Candidate(id=1, run_id=1, number=0, operator="import", code_hash="a", state="COMPLETE", accepted=True),
            Candidate(id=2, run_id=1, number=1, operator="import", code_hash="b", state="FAIL", accepted=False),
            Candidate(id=3, run_id=1, number=2, operator="import", code_hash="a", state="COMPLETE", accepted=True,
                      in_population=True),
            Candidate(id=4, run_id=1, number=3, operator="mutate", code_hash="c", state="COMPLETE", accepted=True,
                      in_population=True),
            Candidate(id=5, run_id=1, number=4, operator="tweak", code_hash="d", state="WAITING")]
    c = counts.count(rows, seed_id=3)
    assert (c.total, c.n_children, c.n_history, c.seed, c.members) == (5, 2, 2, "accepted", 2)
    assert c[counts.ACCEPTED] == 1 and c[counts.WAITING] == 1 and c[counts.REJECTED] == 0
    assert c.children_line() == "2 children: 1 accepted, 1 waiting"
    assert c.children_line(inline=True) == "2 children (1 accepted, 1 waiting)"
    assert c.line() == "candidates 5: seed accepted; 2 children: 1 accepted, 1 waiting; 2 imported (1 kept)"
    assert counts.count([], None).line() == "candidates 0: no seed yet; 0 children"


# ----- one run, every view ----------------------------------------------------------------------------

def legend(fig: dict) -> dict[str, int]:
    """{outcome: n} from a figure's legend entries named 'outcome (n)' or 'outcome (n evaluations)'."""
    out = {}
    for t in fig["data"]:
        m = re.fullmatch(r"(\w+) \((\d+)(?: evaluations?)?\)", t.get("name", ""))
        if m and m.group(1) in counts.OUTCOMES:
            out[m.group(1)] = int(m.group(2))
    return out


@pytest.fixture(scope="module")
def every_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    path = tmp_path_factory.mktemp("counts") / "evo.db"
    url = f"sqlite:///{path}"
    code = default_code(120)
    history = (Imported("k0", None, code + "# baseline\n", "baseline", 1.01, "keep"),
               Imported("d1", "k0", code + "# gelu\n", "switch to GeLU", 1.02, "discard"),
               Imported("c2", "k0", code + "# depth 64\n", "depth 64 (OOM)", None, "crash"),
               Imported("k3", "k0", code + "# lr\n", "raise LR", 1.005, "keep"))
    archive = Archive(url)
    run = synthesize(archive, 36, name="every", seed=5, code=code, fail_rate=0.2, history=history)
    archive.close()
    return url, run.id


def test_every_view_counts_a_run_alike(every_state: tuple[str, int]) -> None:
    url, run_id = every_state
    archive = Archive(url, writer=False)
    tally = archive.tally(run_id)
    cands = archive.candidates(run_id)
    run = archive.run_by_id(run_id)
    # the run holds what the test is about: every kind of candidate
    assert tally.n_history == 4 and tally.history == {"accepted": 2, "rejected": 1, "failed": 1}
    assert tally.seed == "accepted" and tally[counts.ACCEPTED] and tally[counts.REJECTED] and tally[counts.FAILED]
    assert any(c.n_evals >= 2 for c in cands if c.operator != "import" and c.id != run.seed_id), "a confirmed child"
    assert tally == counts.count(cands, run.seed_id), "SQL and the rows count alike"
    children = {o: n for o, n in tally.children.items() if n}

    with reader(archive) as (_, s):
        figs, meta, table, _, lin = _figures(s, snapshot(s, run_id), None)
    assert {o: n for o, n in meta["outcomes"].items() if n} == children
    assert (meta["candidates"], meta["children"], meta["history"]["n"]) == (tally.total, tally.n_children, 4)
    header = html.header(meta, None)
    assert f'<h3>Children</h3><div class="big">{tally.n_children}</div>' in header
    for o in ("accepted", "rejected", "failed", "pruned"):
        assert (f"{tally[o]} {o}" in header) == bool(tally[o])
    drawn = {o: n for o, n in children.items() if o in ("accepted", "rejected", "undecided", "failed", "pruned")}
    for key in ("progress:number", "progress:time"):
        assert legend(figs[key]) == drawn, key
    for key in ("lineage:generation", "lineage:time"):
        assert legend(figs[key]) == children, key
    outcome_of = dict(zip(table["number"], table["outcome"]))
    evaluations = {o: 0 for o in counts.OUTCOMES}
    for e in archive.evaluations(run_id):
        c = next(c for c in cands if c.id == e.candidate_id)
        if e.state == "FAIL":
            evaluations["failed"] += 1
        elif e.state == "COMPLETE" and c.id != run.seed_id:
            evaluations[outcome_of[c.number] if outcome_of[c.number] in ("accepted", "rejected", "pruned") else "undecided"] += 1
    slots = legend(figs["slots"])
    assert all(slots.get(o, 0) == evaluations[o] for o in ("rejected", "failed")), "the timeline counts evaluations"

    cli = CliRunner()
    status = cli.invoke(app, ["status", "--name", "every", "--storage", url])
    assert status.exit_code == 0, status.output
    assert tally.line() in status.output
    listed = cli.invoke(app, ["list", "--storage", url])
    row = next(line for line in listed.output.splitlines() if line.startswith("every "))
    assert row.split()[2:5] == [str(tally.total), str(tally.n_children), str(tally[counts.ACCEPTED])], listed.output
    for c in cands[:: max(1, len(cands) // 8)]:
        shown = cli.invoke(app, ["show", str(c.number), "--name", "every", "--storage", url])
        assert shown.exit_code == 0, shown.output
        said = counts.word(outcome_of[c.number], "history" if c.operator == "import" and c.id != run.seed_id else "child")
        assert re.search(rf"^state: .*; {said} ", shown.output, re.M), shown.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_chromium_shows_the_counts_of_a_seeded_run_with_every_outcome(every_state: tuple[str, int], tmp_path: Path) -> None:
    from test_report import ARTIFACTS, Chromium, check_page
    url, run_id = every_state
    archive = Archive(url, writer=False)
    tally = archive.tally(run_id)
    out = write_report(archive, "every", tmp_path / "every.html")
    browser = Chromium(1400, 2200)
    try:
        browser.open(out.resolve().as_uri())
        check_page(browser)
        legends = browser.js("""Object.fromEntries(['progress', 'lineage', 'slots'].map(k => [k,
            Array.from(document.querySelectorAll(`.fig[data-fig="${k}"] .legendtext`)).map(e => e.textContent)]))""")
        for o in ("accepted", "rejected", "failed"):
            assert f"{o} ({tally[o]})" in legends["progress"] and f"{o} ({tally[o]})" in legends["lineage"], legends
        assert "imported (4, measured elsewhere)" in legends["lineage"] and "seed (accepted)" in legends["lineage"]
        assert all(t.endswith("evaluations)") or t.endswith("evaluation)") or "idle" in t for t in legends["slots"]), legends
        assert browser.js("Array.from(document.querySelectorAll('.card')).find(c => c.querySelector('h3').textContent "
                          "=== 'Children').querySelector('.big').textContent") == str(tally.n_children)
        browser.js("document.querySelector('.tabs[data-for=\"progress\"] button[data-variant=\"number\"]').click()")
        browser.wait("Array.from(document.querySelectorAll('.fig[data-fig=\"progress\"] .legendtext'))"
                     ".some(e => e.textContent.startsWith('imported: kept'))", 20)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.screenshot(ARTIFACTS / "report-seeded-every-outcome.png")
    finally:
        browser.close()


@pytest.mark.slow
def test_a_resumed_run_counts_its_children_against_its_budget(tmp_path: Path) -> None:
    """The issue's resumed run showed "Candidates 10" beside "budget 6": children and budget now
    read the same count, in the report (Chromium, when installed), `evo status` and `evo list`."""
    from test_report import ARTIFACTS, SURROGATE, Chromium, check_page, embedded
    url = f"sqlite:///{tmp_path}/evo.db"
    base = [sys.executable, "-m", "evo", "run", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train",
            str(SURROGATE / "train.py"), "--preset", "smoke", "--operator", "tweak", "--name", "again"]
    env = {**os.environ, "EVO_STORAGE": url}
    first = subprocess.run(base + ["--max-candidates", "3"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    resumed = subprocess.run(base + ["--resume", "--max-candidates", "6"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    archive = Archive(url, writer=False)
    run = archive.find_run("again")
    tally = archive.tally(run.id)
    assert tally.n_children == 6 and tally.total == 7
    status = CliRunner().invoke(app, ["status", "--name", "again", "--storage", url]).output
    assert tally.line() in status and "6/6 children" in status, status
    out = write_report(archive, "again", tmp_path / "again.html")
    d = embedded(out.read_text())[0]
    assert (d["meta"]["children"], d["meta"]["max_candidates"], d["meta"]["status"]) == (6, 6, "FINISHED")
    assert d["meta"]["finished"] is not None, "an ended run says when it ended"
    header = html.header(d["meta"], None)
    assert '<h3>Children</h3><div class="big">6</div>' in header and "<b>budget</b>6 children" in header
    if shutil.which("chromium") is None:
        return
    browser = Chromium(1400, 1400)
    try:
        browser.open(out.resolve().as_uri())
        check_page(browser)
        assert "finished–" not in browser.js("document.querySelector('.config').textContent").replace(" ", "")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.screenshot(ARTIFACTS / "report-resumed.png")
    finally:
        browser.close()
