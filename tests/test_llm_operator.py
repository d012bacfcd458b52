"""The LLM operator end to end over HTTP: the real `openai` and `anthropic` SDKs talk to the fake
server in tests/llm_server.py, which plays good edits, unusable replies, rate limits, outages,
timeouts and huge replies. SDK timeouts are short and retry-after headers keep backoff small."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from evo.storage import LLMCall
from evo.operators.base import OperatorError, OperatorUnavailable, Parent
from evo.operators.llm.client import (DEFAULT_PRICES, LLMClient, LLMUnavailable, ModelSpec, check_credentials, cost_usd,
                                      default_max_tokens, is_self_hosted, parse_model_spec, price_for)
from evo.operators.llm.operator import LLMContext, LLMOperator
from evo.operators.prompts import CandidateSummary, Lineage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import Reply, Sleep, Status  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "seed_train.py").read_text()
PROGRAM = (ROOT / "program.md").read_text()
CALL_FIELDS = {"model", "purpose", "tokens_in", "tokens_out", "latency_s", "cost_usd", "error", "prompt", "response"}
FAST = {"timeout": 0.3, "max_retries": 1}


def edit(old: str, new: str, title: str = "raise the Muon learning rate") -> str:
    return (f"TITLE: {title}\nRATIONALE: the matrices train slowly in a short budget; a worse val_bpb refutes it.\n"
            f"EDIT:\n```python\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n```\n")


GOOD = edit("MATRIX_LR = 0.04            # Muon, the 2-D matrices of the transformer blocks",
            "MATRIX_LR = 0.05            # Muon, the 2-D matrices of the transformer blocks")
NO_MATCH = edit("MATRIX_LR = 0.4   # not in the file", "MATRIX_LR = 0.5")
SYNTAX = edit("MATRIX_LR = 0.04            # Muon, the 2-D matrices of the transformer blocks", "MATRIX_LR = (0.05")


class FakeArchive:
    """Candidates with code and summaries; implements the context callbacks the lead's archive will."""

    def __init__(self):
        self.summaries: dict[int, CandidateSummary] = {}
        self.codes: dict[int, str] = {}

    def add(self, cid: int, code: str, parent_id: int | None = None, hypothesis: str = "", val_bpb: float | None = 1.0,
            state: str = "COMPLETE", fail_reason: str | None = None, log_tail: str = "") -> Parent:
        self.summaries[cid] = CandidateSummary(cid, hypothesis, val_bpb, None, state, fail_reason, log_tail, "mutate",
                                               id=cid, parent_id=parent_id)
        self.codes[cid] = code
        return Parent(cid, cid, code, hypothesis, val_bpb)

    def lineage(self, cid: int) -> Lineage:
        node, chain = self.summaries[cid], []
        p = node.parent_id
        while p is not None:
            chain.append(self.summaries[p])
            p = self.summaries[p].parent_id
        children = [c for c in self.summaries.values() if c.parent_id == cid]
        failures = [c for c in self.summaries.values() if c.state == "FAIL"]
        done = [c for c in self.summaries.values() if c.val_bpb is not None]
        return Lineage(node, tuple(reversed(chain)), tuple(children), tuple(failures),
                       min(done, key=lambda c: c.val_bpb) if done else None, sigma=0.0003)

    def context(self) -> LLMContext:
        return LLMContext(PROGRAM, {"preset": "gpu", "device": "NVIDIA H100 80GB HBM3", "TIME_BUDGET": "300 s"},
                          self.lineage, self.codes.__getitem__)


@pytest.fixture(autouse=True)
def fresh(server, monkeypatch):
    server.clear()
    server.latency = 0.0
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


@pytest.fixture
def archive() -> FakeArchive:
    a = FakeArchive()
    a.add(0, SEED, None, "seed", 1.0)
    return a


def operator(server, archive, provider="openai", **kw) -> LLMOperator:
    url = server.openai_url if provider == "openai" else server.anthropic_url
    return LLMOperator([parse_model_spec(f"{provider}:fake-coder@{url}")], archive.context(), client_options=FAST, **kw)


def seed_parent(archive) -> list[Parent]:
    p = Parent(0, 0, SEED, "seed", 1.0)
    return [p, p]


# ---------------------------------------------------------------------------
# model specs, keys, prices
# ---------------------------------------------------------------------------

def test_model_specs_and_credentials(monkeypatch):
    assert parse_model_spec("anthropic:claude-sonnet-4-5") == ModelSpec("anthropic", "claude-sonnet-4-5")
    spec = parse_model_spec("openai:qwen3-coder@http://localhost:8000/v1/")
    assert spec == ModelSpec("openai", "qwen3-coder", "http://localhost:8000/v1") and str(spec) == "openai:qwen3-coder@http://localhost:8000/v1"
    for bad, words in (("claude", "provider:model"), ("google:gemini", "anthropic or openai"),
                       ("openai:", "provider:model"), ("openai:x@localhost:8000", "http://")):
        with pytest.raises(OperatorError, match=words):
            parse_model_spec(bad)
    assert is_self_hosted("http://gpu-box:8000/v1") and is_self_hosted("https://127.0.0.1/v1")
    assert is_self_hosted("https://10.0.0.5:8000/v1") and not is_self_hosted("https://openrouter.ai/api/v1")
    specs = [parse_model_spec("anthropic:claude-sonnet-4-5"), parse_model_spec("openai:qwen@http://localhost:1/v1")]
    with pytest.raises(OperatorError, match="set ANTHROPIC_API_KEY") as info:
        check_credentials(specs, env={})
    assert str(info.value).count(". ") == 0
    check_credentials(specs, env={"ANTHROPIC_API_KEY": "sk-test"})
    with pytest.raises(OperatorError, match="OPENAI_API_KEY"):
        LLMOperator([parse_model_spec("openai:gpt-5")], FakeArchive().context())


def test_prices():
    sonnet = parse_model_spec("anthropic:claude-sonnet-4-5-20250929")
    assert price_for(sonnet) == DEFAULT_PRICES["claude-sonnet-4-5"]
    assert price_for(parse_model_spec("openai:gpt-5-mini")) == DEFAULT_PRICES["gpt-5-mini"]  # longest prefix
    assert price_for(parse_model_spec("openai:qwen@http://localhost:8000/v1")) == (0.0, 0.0)
    assert price_for(parse_model_spec("openai:mystery-model")) is None
    assert price_for(sonnet, {"claude-sonnet-4-5": {"input": 1, "output": 2}}) == (1.0, 2.0)
    assert price_for(parse_model_spec("openai:q@http://localhost:8000/v1"), {"openai:q": [0.1, 0.2]}) == (0.1, 0.2)
    assert cost_usd(sonnet, 1_000_000, 100_000) == pytest.approx(3.0 + 1.5)
    with pytest.raises(OperatorError, match="price for 'x'"):
        price_for(sonnet, {"x": "cheap"})


def test_output_token_limits_fit_the_model():
    assert default_max_tokens(parse_model_spec("anthropic:claude-sonnet-4-5")) == 16_000
    assert default_max_tokens(parse_model_spec("anthropic:claude-3-5-haiku-latest")) == 8_192
    assert default_max_tokens(parse_model_spec("openai:gpt-5-mini")) == 32_000      # reasoning
    assert default_max_tokens(parse_model_spec("openai:q@http://localhost:8000/v1")) == 8_192  # local context


# ---------------------------------------------------------------------------
# mutation through both SDKs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_good_edit(server, archive, provider):
    server.push(Reply(GOOD, usage=(12_000, 300)))
    op = operator(server, archive, provider, prices={"fake-coder": [3.0, 15.0]})
    p = op.propose(seed_parent(archive), random.Random(0))
    assert p.hypothesis == "raise the Muon learning rate" and "refutes" in p.rationale
    assert "MATRIX_LR = 0.05 " in p.code and p.code.count("\n") == SEED.count("\n")
    assert p.model.startswith(f"{provider}:fake-coder@http://127.0.0.1:")
    assert p.extra["operator"] == "mutate" and p.extra["parent2_used"] is False
    (call,) = p.extra["llm_calls"]
    assert set(call) == CALL_FIELDS and set(call) <= set(LLMCall.model_fields)
    assert call["purpose"] == "mutate" and call["tokens_in"] == 12_000 and call["tokens_out"] == 300
    assert call["cost_usd"] == pytest.approx((12_000 * 3 + 300 * 15) / 1e6)
    assert call["response"] == GOOD and call["error"] is None and PROGRAM.strip() in call["prompt"]
    (req,) = server.requests
    assert req.path == ("/v1/chat/completions" if provider == "openai" else "/v1/messages")
    assert PROGRAM.strip() in req.prompt_text and SEED.rstrip() in req.prompt_text


def test_whole_file_reply(server, archive):
    new = SEED.replace("NS_STEPS = 5 ", "NS_STEPS = 4 ")
    server.push(Reply(f"TITLE: fewer polar-express steps\nRATIONALE: faster steps.\n```python\n{new}```\n"))
    p = operator(server, archive).propose(seed_parent(archive), random.Random(0))
    assert p.code == new and p.hypothesis == "fewer polar-express steps"


@pytest.mark.parametrize("bad, words", [
    (NO_MATCH, "matches nothing"),
    (SYNTAX, "does not parse"),
    ("", "empty"),
    ("I would lower the learning rate; it tends to help.", "has no edit"),
    (Reply(GOOD[: len(GOOD) // 2], finish="length"), "output-token limit"),
    (Reply("TITLE: big\n" + "x = 1\n" * 900_000), "over the 1,000,000 limit"),
    (edit("from prepare import MAX_SEQ_LEN, PRESET, TIME_BUDGET, Tokenizer, evaluate_bpb, get_device, make_dataloader",
          "from prepare import PRESET, TIME_BUDGET, Tokenizer, evaluate_bpb, get_device, make_dataloader"), "MAX_SEQ_LEN"),
])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_unusable_reply_gets_one_repair_round(server, archive, provider, bad, words):
    server.push(bad if isinstance(bad, Reply) else Reply(bad), Reply(GOOD))
    p = operator(server, archive, provider).propose(seed_parent(archive), random.Random(0))
    assert "MATRIX_LR = 0.05 " in p.code
    first, repair = p.extra["llm_calls"]
    assert (first["purpose"], repair["purpose"]) == ("mutate", "repair")
    assert words in first["error"] and repair["error"] is None
    assert len(first["response"]) <= 200_100  # a huge reply is clipped in the audit record
    retry = server.requests[1]
    msgs = retry.body["messages"]
    assert [m["role"] for m in msgs][-3:] == ["user", "assistant", "user"] and words in msgs[-1]["content"]


def test_second_failure_is_an_operator_error_with_the_calls(server, archive):
    server.push(Reply(SYNTAX), Reply(NO_MATCH))
    with pytest.raises(OperatorError, match="after a repair round: the SEARCH block matches nothing") as info:
        operator(server, archive).propose(seed_parent(archive), random.Random(0))
    e = info.value
    assert not isinstance(e, OperatorUnavailable) and e.operator == "mutate"
    assert [c["purpose"] for c in e.llm_calls] == ["mutate", "repair"] and all(c["response"] for c in e.llm_calls)
    assert "does not parse" in e.llm_calls[0]["error"] and "matches nothing" in e.llm_calls[1]["error"]


def test_api_refusal_is_an_operator_error(server, archive):
    server.push(Status(401, "invalid x-api-key"))
    with pytest.raises(OperatorError, match="HTTP 401") as info:
        operator(server, archive, "anthropic").propose(seed_parent(archive), random.Random(0))
    assert not isinstance(info.value, LLMUnavailable) and len(info.value.llm_calls) == 1
    assert len(server.requests) == 1  # 401 is not retried


# ---------------------------------------------------------------------------
# robustness: rate limits, outages, timeouts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_429_then_success(server, archive, provider):
    server.push(Status(429, retry_after_ms=30), Reply(GOOD))
    p = operator(server, archive, provider).propose(seed_parent(archive), random.Random(0))
    assert "MATRIX_LR = 0.05 " in p.code and len(server.requests) == 2
    assert len(p.extra["llm_calls"]) == 1  # the SDK's retry is inside one call


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_repeated_500s_make_the_operator_unavailable(server, archive, provider):
    server.push(Status(500, times=5))
    with pytest.raises(LLMUnavailable, match="HTTP 500 through every retry") as info:
        operator(server, archive, provider).propose(seed_parent(archive), random.Random(0))
    e = info.value
    assert isinstance(e, OperatorUnavailable) and not isinstance(e, OperatorError)
    (call,) = e.llm_calls
    assert call["purpose"] == "mutate" and "500" in call["error"] and call["response"] is None
    assert len(server.requests) == 2  # first try + max_retries=1


def test_timeouts_make_the_operator_unavailable_quickly(server, archive):
    server.push(Sleep(3.0), Sleep(3.0))
    with pytest.raises(LLMUnavailable, match="did not answer"):  # the client's 0.3 s timeout fired, twice
        operator(server, archive).propose(seed_parent(archive), random.Random(0))
    assert len(server.requests) == 2


def test_outage_during_the_repair_round_keeps_the_first_call(server, archive):
    server.push(Reply(NO_MATCH), Status(503, times=2))
    with pytest.raises(LLMUnavailable) as info:
        operator(server, archive).propose(seed_parent(archive), random.Random(0))
    assert [c["purpose"] for c in info.value.llm_calls] == ["mutate", "repair"]


def test_latency_is_measured(server, archive):
    server.latency = 0.15
    server.push(Reply(GOOD))
    p = operator(server, archive).propose(seed_parent(archive), random.Random(0))
    assert p.extra["llm_calls"][0]["latency_s"] >= 0.15


# ---------------------------------------------------------------------------
# crossover, merge, fix
# ---------------------------------------------------------------------------

def two_lines(archive, b_change=("WARMDOWN_RATIO = 0.5 ", "WARMDOWN_RATIO = 0.7 ")) -> list[Parent]:
    """seed #0 -> #1 -> #3 (A) and #0 -> #2 -> #4 (B), with one change on each step."""
    c1 = SEED.replace("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.05 ")
    archive.add(1, c1, 0, "raise the Muon lr", 0.99)
    c2 = SEED.replace(*b_change)
    archive.add(2, c2, 0, "longer warmdown", 0.995)
    a = archive.add(3, c1.replace("NS_STEPS = 5 ", "NS_STEPS = 4 "), 1, "fewer NS steps", 0.985)
    b = archive.add(4, c2.replace("LOGIT_SOFTCAP = 15.0 ", "LOGIT_SOFTCAP = 20.0 "), 2, "softer cap", 0.99)
    return [a, b]


def test_clean_crossover_is_a_merge_without_an_llm_call(server, archive):
    parents = two_lines(archive)
    p = operator(server, archive, crossover_rate=1.0).propose(parents, random.Random(0))
    assert p.extra == {"operator": "merge", "parent2_used": True, "llm_calls": []} and p.model is None
    assert all(s in p.code for s in ("MATRIX_LR = 0.05 ", "NS_STEPS = 4 ", "WARMDOWN_RATIO = 0.7 ", "LOGIT_SOFTCAP = 20.0 "))
    assert p.hypothesis.startswith("merge #3 + #4") and "ancestor #0" in p.rationale
    assert server.requests == []


def test_conflicting_crossover_asks_the_llm(server, archive):
    parents = two_lines(archive, b_change=("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.03 "))
    server.push(Reply(edit("NS_STEPS = 4                # polar-express iterations per Muon step",
                           "NS_STEPS = 4                # polar-express iterations per Muon step\nLOGIT_SOFTCAP = 20.0",
                           title="fewer NS steps with a softer cap")))
    p = operator(server, archive, crossover_rate=1.0).propose(parents, random.Random(0))
    assert p.extra["operator"] == "crossover" and p.extra["parent2_used"] is True
    assert p.hypothesis == "fewer NS steps with a softer cap" and p.extra["llm_calls"][0]["purpose"] == "crossover"
    sent = server.requests[0].prompt_text
    assert "+MATRIX_LR = 0.05" in sent and "+MATRIX_LR = 0.03" in sent and "common ancestor #0" in sent


def test_same_parent_twice_or_ancestor_pair_mutates(server, archive):
    server.push(Reply(GOOD))
    p = operator(server, archive, crossover_rate=1.0).propose(seed_parent(archive), random.Random(0))
    assert p.extra["operator"] == "mutate"
    a, _ = two_lines(archive)
    server.push(Reply(edit("NS_STEPS = 4                # polar-express iterations per Muon step",
                           "NS_STEPS = 3                # polar-express iterations per Muon step")))
    p = operator(server, archive, crossover_rate=1.0).propose([a, Parent(1, 1, archive.codes[1], "x", 0.99)], random.Random(0))
    assert p.extra["operator"] == "mutate"  # #1 is #3's parent: nothing to combine


def test_fix_engine_form(server, archive):
    broken = SEED.replace("MATRIX_LR = 0.04 ", "MATRIX_LR = LR_FOR_MATRICES ")
    failed = archive.add(5, broken, 0, "tie the matrix lr to a constant", None, "FAIL", "crash",
                         "Traceback (most recent call last):\nNameError: name 'LR_FOR_MATRICES' is not defined")
    server.push(Reply(edit("MATRIX_LR = LR_FOR_MATRICES            # Muon, the 2-D matrices of the transformer blocks",
                           "MATRIX_LR = 0.04            # Muon, the 2-D matrices of the transformer blocks",
                           title="define the matrix lr")))
    p = operator(server, archive).propose_fix(failed, random.Random(0))
    assert p.hypothesis == "fix: define the matrix lr" and p.extra["fix"] is True and p.extra["operator"] == "mutate"
    assert p.extra["llm_calls"][0]["purpose"] == "fix"
    sent = server.requests[0].prompt_text
    assert "NameError: name 'LR_FOR_MATRICES'" in sent and "+MATRIX_LR = LR_FOR_MATRICES" in sent


def test_fix_explicit_form(server, archive):
    broken = SEED.replace("NS_STEPS = 5 ", "NS_STEPS = five ")
    child = CandidateSummary(6, "words for numbers", None, None, "FAIL", "crash", "NameError: name 'five' is not defined")
    server.push(Reply(edit("NS_STEPS = five                # polar-express iterations per Muon step",
                           "NS_STEPS = 5                # polar-express iterations per Muon step", title="fix: five -> 5")))
    p = operator(server, archive, "anthropic").propose_fix(broken, child, Parent(0, 0, SEED, "seed", 1.0), random.Random(0))
    assert p.hypothesis == "fix: five -> 5" and p.code == SEED


# ---------------------------------------------------------------------------
# several models
# ---------------------------------------------------------------------------


def test_model_choice_bandit_and_weights(server, archive):
    specs = [parse_model_spec(f"openai:cheap@{server.openai_url}"), parse_model_spec(f"openai:dear@{server.openai_url}")]
    op = LLMOperator(specs, archive.context(), client_options=FAST, prices={"cheap": [0, 0], "dear": [100, 100]})
    rng = random.Random(1)
    for _ in range(30):
        op.record_outcome(str(specs[0]), 0.0, 0.0)
        op.record_outcome(str(specs[1]), 1.0, 2.0)
    picks = [str(op.choose_model(rng)) for _ in range(200)]
    assert picks.count(str(specs[1])) > 150  # improves every time: worth its price against the slot cost
    op2 = LLMOperator(specs, archive.context(), client_options=FAST, weights=[1, 0])
    assert {str(op2.choose_model(rng)) for _ in range(50)} == {str(specs[0])}
    server.push(Reply(GOOD))
    p = op2.propose(seed_parent(archive), rng)
    assert p.model == str(specs[0]) and server.requests[0].body["model"] == "cheap"


def test_client_usage_fallback_counts_tokens(server):
    server.push(Reply("hello there", omit_usage=True))
    reply = LLMClient(parse_model_spec(f"openai:fake@{server.openai_url}"), **FAST).complete("sys", [{"role": "user", "content": "hi"}])
    assert reply.text == "hello there" and reply.tokens_in > 0 and reply.tokens_out > 0 and not reply.truncated
