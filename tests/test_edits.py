"""Pure parts of the LLM operator: parsing and applying replies, validating children, building
prompts within their token budget, and the 3-way merge with the common-ancestor search."""

from __future__ import annotations

from pathlib import Path

import pytest

from evo.core.lineage import lowest_common_ancestor
from evo.operators.base import OperatorError
from evo.operators.edits import MAX_REPLY_CHARS, Block, EditError, apply_blocks, apply_reply, parse_reply
from evo.operators.merge import merge3
from evo.operators.prompts import (CandidateSummary, Lineage, PromptTooLarge, approx_tokens, count_tokens,
                                   crossover_prompt, fix_prompt, mutation_prompt, token_counter)
from evo.operators.validate import ALLOWED_IMPORTS, prepare_imports, validate_child

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "seed_train.py").read_text()
AUTORESEARCH = (ROOT / "tests" / "fixtures" / "autoresearch_style_train.py").read_text()
PROGRAM = (ROOT / "program.md").read_text()

CODE = "import os\n\ndef f(x):\n    a = 1\n    b = 2   \n    return a + b\n\n\ndef g():\n    a = 1\n    return a\n\nLR = 0.1\n"


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


# ---------------------------------------------------------------------------
# parse_reply
# ---------------------------------------------------------------------------

def test_parse_title_rationale_and_fenced_blocks():
    reply = parse_reply("TITLE: lower the learning rate\nRATIONALE: it overshoots;\na worse val_bpb refutes it.\nEDIT:\n"
                        "```python\n" + block("LR = 0.1\n", "LR = 0.05\n") + "```\n\n```\n"
                        + block("    b = 2\n", "    b = 3\n") + "```\n")
    assert reply.hypothesis == "lower the learning rate"
    assert reply.rationale == "it overshoots;\na worse val_bpb refutes it."
    assert reply.blocks == (Block("LR = 0.1\n", "LR = 0.05\n"), Block("    b = 2\n", "    b = 3\n"))
    assert reply.full_code is None


def test_parse_markdown_labels_and_unlabelled_title():
    r = parse_reply("**Title:** deeper model\n**Rationale:** more capacity\n" + block("a\n", "b\n"))
    assert (r.hypothesis, r.rationale) == ("deeper model", "more capacity")
    r = parse_reply("## Hypothesis\nwider MLP\n## Rationale\nbecause\n" + block("a\n", "b\n"))
    assert (r.hypothesis, r.rationale) == ("wider MLP", "because")
    r = parse_reply("Use a cosine schedule\nIt decays smoothly.\n" + block("a\n", "b\n"))
    assert r.hypothesis == "Use a cosine schedule" and r.rationale == "It decays smoothly."


def test_parse_whole_file_reply():
    r = parse_reply("TITLE: rewrite\nRATIONALE: simpler\n```python\n" + CODE + "```\n")
    assert r.full_code == CODE and not r.blocks
    assert apply_reply(CODE.replace("0.1", "0.2"), r) == CODE


def test_parse_crlf_and_long_markers():
    r = parse_reply("TITLE: x\r\n<<<<<<<< SEARCH\r\nLR = 0.1\r\n========\r\nLR = 0.2\r\n>>>>>>>> REPLACE\r\n")
    assert r.blocks == (Block("LR = 0.1\n", "LR = 0.2\n"),)


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("   \n\n ", "empty"),
    ("I think lowering the learning rate would help a lot.", "no edit"),
    ("TITLE: x\n<<<<<<< SEARCH\nLR = 0.1\n=======\nLR = 0.2\n", "ended inside a SEARCH/REPLACE block"),
    ("TITLE: x\n<<<<<<< SEARCH\nLR = 0.1\n", "ended inside a SEARCH/REPLACE block"),
    ("TITLE: x\n```python\nimport os\nLR = 0.2\n", "never closes"),
    ("TITLE: x\n<<<<<<< SEARCH\na\n<<<<<<< SEARCH\nb\n=======\nc\n>>>>>>> REPLACE\n", "no '=======' divider"),
])
def test_parse_errors_are_one_actionable_sentence(text, words):
    with pytest.raises(EditError, match=words) as info:
        parse_reply(text)
    assert isinstance(info.value, OperatorError)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


def test_truncated_reply_is_refused_even_when_its_blocks_closed():
    with pytest.raises(EditError, match="output-token limit"):
        parse_reply("TITLE: x\n" + block("LR = 0.1\n", "LR = 0.2\n"), truncated=True)
    with pytest.raises(EditError, match="output-token limit inside a code block"):
        parse_reply("TITLE: x\n```python\nimport os\n", truncated=True)


def test_huge_reply_is_refused_unread():
    with pytest.raises(EditError, match="over the 1,000,000 limit"):
        parse_reply("TITLE: x\n" + "y" * (MAX_REPLY_CHARS + 1))


# ---------------------------------------------------------------------------
# apply
# ---------------------------------------------------------------------------

def test_exact_match_is_line_anchored():
    # "a = 1" occurs inside two functions; "LR = 0.1" once; "b = 2   " has trailing spaces
    assert apply_blocks(CODE, [Block("LR = 0.1\n", "LR = 0.3\n")]).endswith("LR = 0.3\n")
    with pytest.raises(EditError, match="matches 2 places"):
        apply_blocks(CODE, [Block("    a = 1\n", "    a = 5\n")])
    # "a = 1\n" is a substring of "    a = 1\n" but not at a line start: the tolerant pass finds two
    with pytest.raises(EditError, match="matches 2 places in train.py \\(ignoring whitespace\\)"):
        apply_blocks(CODE, [Block("a = 1\n", "a = 5\n")])


def test_whitespace_tolerant_fallback_and_reindent():
    out = apply_blocks(CODE, [Block("    b = 2\n", "    b = 4\n")])  # trailing spaces in the file
    assert "    b = 4\n" in out and "b = 2" not in out
    out = apply_blocks(CODE, [Block("b = 2\nreturn a + b\n", "b = 4\nif b:\n    return a * b\n")])
    assert "    b = 4\n    if b:\n        return a * b\n" in out
    out = apply_blocks(CODE, [Block("\n\n        b = 2\n        return a + b\n\n", "        return a\n")])
    assert "def f(x):\n    a = 1\n    return a\n" in out


def test_blocks_apply_in_order_on_the_changed_code():
    out = apply_blocks(CODE, [Block("LR = 0.1\n", "LR = 0.2\n"), Block("LR = 0.2\n", "LR = 0.4\n")])
    assert out.endswith("LR = 0.4\n")


def test_search_that_matches_nothing_points_at_the_closest_line():
    with pytest.raises(EditError, match=r"(?s)matches nothing.*closest part of the file is line 6.*\n-    return a - b\n\+    return a \+ b\n"):
        apply_blocks(CODE, [Block("    return a - b\n", "    return 0\n")])
    with pytest.raises(EditError, match="SEARCH block 2 of 2 matches nothing"):
        apply_blocks(CODE, [Block("LR = 0.1\n", "LR = 0.2\n"), Block("nothing like it\n", "x\n")])
    with pytest.raises(EditError, match="is empty"):
        apply_blocks(CODE, [Block("\n", "x = 1\n")])


def test_no_op_edit_and_fragment_are_refused():
    with pytest.raises(EditError, match="changes nothing"):
        apply_reply(CODE, parse_reply("TITLE: x\n" + block("LR = 0.1\n", "LR = 0.1\n")))
    with pytest.raises(EditError, match="fragment"):
        apply_reply(SEED, parse_reply("TITLE: x\n```python\nMATRIX_LR = 0.05\n```\n"))


def test_edit_of_the_real_seed():
    reply = parse_reply("TITLE: higher Muon lr\nRATIONALE: r\n" + block(
        "MATRIX_LR = 0.04            # Muon, the 2-D matrices of the transformer blocks\n",
        "MATRIX_LR = 0.05            # Muon, the 2-D matrices of the transformer blocks\n"))
    child = apply_reply(SEED, reply)
    assert child.count("MATRIX_LR = 0.05") == 1 and len(child) == len(SEED)
    validate_child(child, SEED)


# ---------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------

def test_valid_children_pass():
    validate_child(SEED, SEED)
    validate_child(AUTORESEARCH, AUTORESEARCH)
    validate_child(AUTORESEARCH)
    ok = SEED + "\nimport itertools, collections.abc\nimport triton\nx = os.environ.get('EVO_SEED')\nos.environ['CUDA_X'] = '1'\n"
    validate_child(ok, SEED)
    # dropping a convenience import the contract does not lock is fine
    validate_child(SEED.replace("from prepare import MAX_SEQ_LEN, PRESET,", "from prepare import MAX_SEQ_LEN,")
                   .replace("PRESET", "'gpu'"), SEED)
    assert {"MAX_SEQ_LEN", "TIME_BUDGET", "Tokenizer", "make_dataloader", "evaluate_bpb"} <= prepare_imports(SEED)
    assert prepare_imports("import prepare as p\nx = p.TIME_BUDGET\np.evaluate_bpb(m, t, 1)\n") >= {"TIME_BUDGET", "evaluate_bpb"}
    assert {"torch", "numpy", "kernels", "prepare", "json"} <= ALLOWED_IMPORTS
    # names bound without an assignment, or through the namespace, are not "undefined"
    for extra in ("\nclass K:\n    name = __qualname__\n    where = __module__\n", "\nprint(__package__, __annotations__)\n",
                  "\nLATE = 1\ndel LATE\n", "\nprint([v for v in range(3)], (w := 2), w)\n",
                  "\ntry:\n    import flash_attn_interface as fast\nexcept ImportError:\n    fast = None\n"):
        validate_child(SEED + extra, SEED)


def test_names_left_undefined_are_refused_but_the_parents_own_are_not():
    with pytest.raises(EditError, match="uses norm but never defines or imports it"):
        validate_child(SEED.replace("def norm(x):", "def rms(x):"), SEED)
    with pytest.raises(EditError, match="uses helper1, helper2 but never defines or imports them"):
        validate_child(SEED + "\nhelper1()\nhelper2()\n", SEED)
    odd = SEED + "\nprint(GIVEN_BY_EXEC)\n"  # a parent that already reads a name it never binds
    validate_child(odd + "\nX = 1\n", odd)


@pytest.mark.parametrize("change, words", [
    (lambda c: c.replace("import math", "import math("), "does not parse: .* at line"),
    (lambda c: c.replace("from prepare import MAX_SEQ_LEN, PRESET,", "from prepare import PRESET,"), "keep importing MAX_SEQ_LEN"),
    (lambda c: c.replace("evaluate_bpb(", "print("), "must still call evaluate_bpb"),
    (lambda c: c + "\ndef evaluate_bpb(*a):\n    return 0.0\n", "must not redefine evaluate_bpb"),
    (lambda c: c + "\nTIME_BUDGET = 10_000\n", "must not redefine TIME_BUDGET"),
    (lambda c: c + "\nMAX_SEQ_LEN, x = 4096, 1\n", "must not redefine MAX_SEQ_LEN"),
    (lambda c: c + "\nclass Tokenizer:\n    pass\n", "must not redefine Tokenizer"),
    (lambda c: c + "\nimport prepare\nprepare.TIME_BUDGET = 10_000\n", "must not assign into prepare"),
    (lambda c: c + "\nimport prepare\nsetattr(prepare, 'TIME_BUDGET', 1)\n", "must not setattr on prepare"),
    (lambda c: c + "\nos.environ['EVO_PRESET'] = 'smoke'\n", "EVO_"),
    (lambda c: c + "\nos.environ.update(EVO_PRESET='smoke')\n", "EVO_"),
    (lambda c: c + "\nos.environ.update({'EVO_CACHE_DIR': '/tmp'})\n", "EVO_"),
    (lambda c: c + "\nos.environ.setdefault('EVO_PRESET', 'cpu')\n", "EVO_"),
    (lambda c: c + "\nos.putenv('EVO_PRESET', 'cpu')\n", "EVO_"),
    (lambda c: c + "\ndel os.environ['EVO_EVAL_RECORD']\n", "EVO_"),
    (lambda c: c + "\nfrom os import environ\nenviron[f'EVO_{1}'] = 'x'\n", "EVO_"),
    (lambda c: c + "\nimport transformers\n", "imports 'transformers'"),
    (lambda c: c + "\ntry:\n    from flash_attn import flash_attn_func\nexcept ImportError:\n    pass\n", "imports 'flash_attn'"),
    (lambda c: c + "\nimport importlib\nm = importlib.import_module('deepspeed')\n", "imports 'deepspeed'"),
    (lambda c: c + "\nfrom . import helpers\n", "relative import"),
])
def test_invalid_children_are_refused(change, words):
    with pytest.raises(EditError, match=words):
        validate_child(change(SEED), SEED)


# ---------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------

FACTS = {"preset": "gpu", "device": "NVIDIA H100 80GB HBM3", "TIME_BUDGET": "300 s of training per candidate"}


def make_lineage(n_ancestors: int = 50, n_failures: int = 6, n_siblings: int = 4) -> Lineage:
    ancestors = [CandidateSummary(i, f"ancestor idea {i}: retune the warmdown and the Muon momentum schedule together",
                                  1.0 - 0.001 * i, None, "COMPLETE", None, "", "mutate" if i else "seed", id=1000 + i,
                                  parent_id=1000 + i - 1 if i else None, delta=-0.001 if i else None, accepted=True)
                 for i in range(n_ancestors)]
    failures = [CandidateSummary(100 + i, f"failure idea {i}", None, None, "FAIL", "crash",
                                 "Traceback (most recent call last):\n  File \"train.py\", line 300\n"
                                 f"RuntimeError: shape mismatch number {i}", "mutate",
                                 fail_detail="exit status 1: RuntimeError") for i in range(n_failures)]
    siblings = [CandidateSummary(200 + i, f"sibling idea {i}", 0.9512, None, "COMPLETE", None, "", "mutate",
                                 delta=0.0003, accepted=False) for i in range(n_siblings)]
    node = CandidateSummary(n_ancestors, "the parent's own idea", 0.9501, 0.0002, "COMPLETE", None, "", "mutate",
                            id=1000 + n_ancestors, parent_id=1000 + n_ancestors - 1, delta=-0.0021, accepted=True,
                            n_evals=3, metrics={"peak_vram_mb": 41234, "num_steps": 1200, "num_params_M": 50.3})
    best = CandidateSummary(77, "the best idea", 0.9400, None, "COMPLETE", None, "", "crossover")
    return Lineage(node, tuple(ancestors), tuple(siblings), tuple(failures), best, sigma=0.0003)


def test_mutation_prompt_holds_everything():
    p = mutation_prompt(PROGRAM, SEED, make_lineage(), FACTS)
    user = p.messages[0]["content"]
    assert PROGRAM.strip() in p.system and "<<<<<<< SEARCH" in p.system and "TITLE:" in p.system
    assert SEED.rstrip() in user
    for text in ("ancestor idea 0:", "ancestor idea 49:", "sibling idea 3", "failure idea 5",
                 "RuntimeError: shape mismatch number 5", "FAIL(crash)", "the best idea", "0.940000",
                 "NVIDIA H100 80GB HBM3", "300 s of training", "41234 MB", "0.000300",
                 "Δ vs its parent: -0.002100 (-7.0σ)", "val_bpb 0.950100 ± 0.000200 over 3 evaluations",
                 "do not repeat", "ONE new idea"):
        assert text in user, text
    assert p.omitted == 0 and p.tokens == count_tokens(p.system) + count_tokens(user)


def test_prompt_size_bound_holds_with_50_ancestors():
    lineage = make_lineage(50, 10, 10)
    full = mutation_prompt(PROGRAM, SEED, lineage, FACTS, budget=10**6)
    budget = full.tokens - 1500
    p = mutation_prompt(PROGRAM, SEED, lineage, FACTS, budget=budget)
    user = p.messages[0]["content"]
    assert p.tokens <= budget and p.omitted > 0
    assert "ancestor idea 0:" not in user and "ancestor idea 49:" in user   # oldest dropped first
    assert "older ancestors omitted" in user and SEED.rstrip() in user and PROGRAM.strip() in p.system
    # dropping one entry fewer would not fit: the trim is minimal
    with pytest.raises(PromptTooLarge, match="without any history"):
        mutation_prompt(PROGRAM, SEED, lineage, FACTS, budget=2000)


def test_token_counter_is_offline_and_sane():
    name, count = token_counter()
    assert count("hello world") >= 2
    n = approx_tokens(SEED)
    assert len(SEED) / 6 < n < len(SEED) / 2   # code runs 3-4 characters per token
    assert name.startswith(("tiktoken", "approx"))


def test_crossover_and_fix_prompts():
    la, lb = make_lineage(5, 0, 0), make_lineage(3, 0, 0)
    a = SEED.replace("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.05 ")
    b = SEED.replace("WARMDOWN_RATIO = 0.5 ", "WARMDOWN_RATIO = 0.7 ")
    anc = la.ancestors[1]
    p = crossover_prompt(PROGRAM, a, b, la, lb, FACTS, ancestor_code=SEED, ancestor=anc)
    user = p.messages[0]["content"]
    assert "+MATRIX_LR = 0.05" in user and "+WARMDOWN_RATIO = 0.7" in user and "-MATRIX_LR = 0.04" in user
    assert f"common ancestor #{anc.number}" in user and a.rstrip() in user and "ancestor idea 4" in user
    child = CandidateSummary(9, "bigger batch", None, None, "FAIL", "crash",
                             "Traceback (most recent call last):\nNameError: name 'foo' is not defined", "mutate")
    p = fix_prompt(PROGRAM, a, child, FACTS, parent_code=SEED)
    user = p.messages[0]["content"]
    assert "NameError: name 'foo'" in user and "must start with 'fix:'" in user and "+MATRIX_LR = 0.05" in user
    repaired = p.with_repair("prose", "the reply has no edit.")
    assert [m["role"] for m in repaired.messages] == ["user", "assistant", "user"]
    assert "the reply has no edit." in repaired.messages[-1]["content"] and repaired.tokens > p.tokens


# ---------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------

def seed_edit(old: str, new: str, code: str = SEED) -> str:
    assert code.count(old) == 1
    return code.replace(old, new)


def test_clean_merge_of_divergent_seed_edits():
    a = seed_edit("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.05 ")
    a = seed_edit("LOGIT_SOFTCAP = 15.0 ", "LOGIT_SOFTCAP = 20.0 ", a)
    b = seed_edit("WARMDOWN_RATIO = 0.5 ", "WARMDOWN_RATIO = 0.7 ")
    b = seed_edit("NS_STEPS = 5 ", "NS_STEPS = 4 ", b)
    text, clean = merge3(SEED, a, b)
    assert clean
    assert all(s in text for s in ("MATRIX_LR = 0.05 ", "LOGIT_SOFTCAP = 20.0 ", "WARMDOWN_RATIO = 0.7 ", "NS_STEPS = 4 "))
    assert len(text.splitlines()) == len(SEED.splitlines()) and text.endswith("\n")
    validate_child(text, SEED)


def test_conflicting_merge_of_seed_edits():
    a = seed_edit("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.05 ")
    b = seed_edit("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.03 ")
    text, clean = merge3(SEED, a, b, ("A #3", "ancestor #1", "B #4"))
    assert not clean
    assert "<<<<<<< A #3" in text and ">>>>>>> B #4" in text and "MATRIX_LR = 0.05" in text and "MATRIX_LR = 0.03" in text


def test_lowest_common_ancestor():
    # 0 - 1 - 2 - 5 ; 1 - 3 - 6 ; 7 is a crossover of 5 and 6 ; 9 has no known ancestry
    parents = {0: None, 1: 0, 2: 1, 5: 2, 3: 1, 6: 3, 7: (5, 6)}
    assert lowest_common_ancestor(5, 6, parents) == 1
    assert lowest_common_ancestor(5, 2, parents) == 2
    assert lowest_common_ancestor(7, 6, parents) == 6
    assert lowest_common_ancestor(5, 9, parents) is None
