"""What the LLM operator's prompts hold and in what order (issue 13): the stable prefix first and
marked for caching, the run-wide idea ledger (a seeded run's imported discards included), the
best candidate's diff, in-flight siblings, a different direction for each concurrent proposal
from one parent, and boldness from the temperature."""

from __future__ import annotations

import random
import re
import sys
import threading
from pathlib import Path

from evo.gitio.greedy import seed_from_repo
from evo.operators.base import Parent
from evo.operators.llm.operator import LLMContext, LLMOperator
from evo.operators.llm.client import parse_model_spec
from evo.operators.memory import ArchiveMemory
from evo.operators.prompts import (DIRECTIONS, CandidateSummary, Lineage, boldness, crossover_prompt, directions,
                                   fix_prompt, ledger_lines, mutation_prompt)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import FakeLLMServer  # noqa: E402
from test_git import greedy_repo, seeded_archive  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "seed_train.py").read_text()
PROGRAM = (ROOT / "program.md").read_text()
FACTS = {"preset": "gpu", "device": "NVIDIA H100 80GB", "TIME_BUDGET": "300 s of training"}


def node(n: int, hypothesis: str = "", **kw) -> CandidateSummary:
    return CandidateSummary(n, hypothesis, kw.pop("val_bpb", 1.0), None, kw.pop("state", "COMPLETE"), **kw)


def test_the_stable_prefix_comes_first_and_is_shared_by_every_prompt_about_one_parent():
    early = Lineage(node(3, "depth 10", delta=-0.001), sigma=0.0010)
    late = Lineage(node(3, "depth 10", delta=-0.001, n_evals=3), sigma=0.0007,
                   siblings=(node(9, "GELU", state="RUNNING", val_bpb=None),),
                   ledger=(node(5, "longer warmdown", accepted=False, delta=0.0004),))
    a = mutation_prompt(PROGRAM, SEED, early, FACTS, focus="learning rates", heat=2.0)
    b = mutation_prompt(PROGRAM, SEED, late, FACTS, focus="model shape", heat=0.1)
    user_a, user_b = a.messages[0]["content"], b.messages[0]["content"]
    assert a.stable_chars == b.stable_chars > len(SEED)
    assert user_a[:a.stable_chars] == user_b[:b.stable_chars] and a.system == b.system
    assert a.cache_key == b.cache_key and len(a.cache_key) == 32
    assert SEED.rstrip() in user_a[:a.stable_chars] and "NVIDIA H100" in user_a[:a.stable_chars]
    # what varies (noise, scores, history, the direction) is after it
    for text in ("0.000700", "GELU", "longer warmdown", "model shape"):
        assert text in user_b[b.stable_chars:] and text not in user_b[:b.stable_chars]
    other = mutation_prompt(PROGRAM, SEED.replace("DEPTH = 8", "DEPTH = 9"), early, FACTS)
    assert other.cache_key != a.cache_key
    cross = crossover_prompt(PROGRAM, SEED, SEED.replace("DEPTH = 8", "DEPTH = 9"), early, late, FACTS)
    assert SEED.rstrip() in cross.messages[0]["content"][:cross.stable_chars]
    fix = fix_prompt(PROGRAM, SEED, node(4, "x", state="FAIL", fail_reason="crash", log_tail="Traceback"), FACTS)
    assert "Traceback" in fix.messages[0]["content"][fix.stable_chars:]


def test_the_crossover_prompt_says_its_diffs_are_for_reading():
    a, b = Lineage(node(1, "a")), Lineage(node(2, "b"))
    user = crossover_prompt(PROGRAM, SEED, SEED.replace("DEPTH = 8", "DEPTH = 9"), a, b, FACTS).messages[0]["content"]
    assert "for reading" in user and "SEARCH lines are copied from A's file" in user


def test_the_ledger_is_one_short_line_per_idea_with_its_outcome():
    entries = [node(1, "switch to GeLU", operator="import", accepted=False, delta=0.005),
               node(4, "depth 64", operator="import", state="FAIL", fail_reason="crash"),
               node(7, "Switch to  GeLU", accepted=False, delta=0.001),
               node(9, "x" * 400, accepted=True, delta=-0.002)]
    lines = ledger_lines(entries, sigma=0.001)
    assert lines[0] == "- #7 Switch to GeLU -> rejected, Δ +1.0σ (tried 2 times)"
    assert lines[1] == "- #4 imported depth 64 -> FAIL(crash)"
    assert lines[2].startswith("- #9 xxx") and lines[2].endswith("-> kept, Δ -2.0σ") and len(lines[2]) < 130


def test_directions_come_from_the_program_and_boldness_from_the_temperature():
    found = directions(PROGRAM)
    assert len(found) >= 5 and found[0].startswith("Learning rates, warmup and warmdown")
    assert all(not d.startswith("- ") for d in found)
    assert directions("# a program\n\nno list here\n") == DIRECTIONS
    assert "3σ or more" in boldness(3.0) and "refine what won" in boldness(0.0) and "1-3σ" in boldness(1.0)
    assert boldness(None) == ""


def test_a_seeded_runs_prompt_shows_the_imported_discards(tmp_path: Path):
    """The greedy branch's discards sit on commits off the seed's line (d1 on k1, a row whose
    commit is gone) and on the tip (k3): the ledger shows them, the crash shows under failures."""
    g = greedy_repo(tmp_path)
    archive, run = seeded_archive(tmp_path, seed_from_repo(str(g.path)))
    seed_id = archive.run_by_id(run.id).seed_id
    memory = ArchiveMemory(archive, run.id)
    lineage = memory.lineage(seed_id)
    user = mutation_prompt(PROGRAM, memory.code(seed_id), lineage, FACTS).messages[0]["content"]
    ledger = user.split("## Ideas tried elsewhere in this run")[1].split("\n## ")[0]
    assert re.search(r"- #\d+ imported switch to GeLU \[\w+\] -> discarded, Δ \+0\.005000", ledger), ledger
    assert re.search(r"- #\d+ imported label smoothing \[.*-> discarded, Δ \+0\.009000", ledger), ledger
    assert re.search(r"- #\d+ imported raise LR to 0.03 \[\w+\] -> kept", ledger), ledger
    assert "depth 64 (OOM)" in user.split("## Recent failures near this parent")[1]


def test_concurrent_proposals_from_one_parent_take_different_directions():
    """The first wave on 8 slots: 8 proposals from the seed at once, 8 different directions."""
    with FakeLLMServer(latency=0.2) as server:
        spec = parse_model_spec(f"openai:fake@{server.openai_url}")
        lineage = Lineage(node(0, "seed"), sigma=0.001)
        op = LLMOperator([spec], LLMContext(PROGRAM, FACTS, lambda cid: lineage), crossover_rate=0.0,
                         client_options={"timeout": 30, "max_retries": 0})
        parent = Parent(0, 0, SEED, "seed", 1.0, heat=2.0)
        threads = [threading.Thread(target=op.propose, args=([parent, parent], random.Random(i))) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        asked = [r.prompt_text for r in server.requests]
    focus = {text.split("Direction for this proposal: ")[1].split(" (other proposals")[0] for text in asked}
    n = len(directions(PROGRAM))
    assert len(asked) == 8 and len(focus) == min(8, n)
    assert all("be bold" in text for text in asked)
