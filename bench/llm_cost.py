"""Dollars per proposal with and without prompt caching, over a 20-proposal run with a
seed_train-sized parent, through the real SDKs against the fake server (tests/llm_server.py).

The fake server answers as the providers' caches do, from the request itself: Anthropic reads
from cache the prefix up to the request's last `cache_control` breakpoint when an earlier request
wrote the same prefix (and writes it otherwise; none below 1,024 tokens); OpenAI caches
automatically the longest prefix shared with an earlier request, in 128-token steps from 1,024
tokens. Its usage fields carry those counts, and each call is billed from them at list prices
(claude-sonnet-4-5: $3 in, $15 out, $0.30 cached read, $3.75 cache write per million; gpt-5: $1.25
in, $10 out, $0.125 cached). Every reply is billed as 1,500 output tokens (a short answer after
some reasoning), so output is not what differs.

"before" is the tree at REV (default 7725015): its prompts (history before the parent's code) and
its client (no cache markers, cached tokens billed at the full price in its own records); "after"
is this tree. The run: proposals 1-8 are the first wave from the seed (8 slots), then parents
rotate over the seed and two children; each proposal leaves a sibling (and, after, a ledger line).

    python3 bench/llm_cost.py [--before REV] [--proposals 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading

from _common import ROOT, header, table

sys.path.insert(0, str(ROOT / "tests"))
from reply_repairs import load  # noqa: E402
from llm_server import FakeLLMServer, Recorded, Reply, auto_edit  # noqa: E402

from evo.operators import prompts as prompts_now  # noqa: E402
from evo.operators.llm import client as client_now  # noqa: E402

PRICES = {"claude-sonnet-4-5": [3.0, 15.0, 0.30], "gpt-5": [1.25, 10.0, 0.125]}
OUTPUT_TOKENS = 1_500
ANTHROPIC_MIN, OPENAI_MIN, OPENAI_STEP = 1_024, 1_024, 128
FACTS = {"preset": "gpu", "device": "NVIDIA H100 80GB HBM3", "TIME_BUDGET": "300 s of training", "slots": "8"}
SEED = (ROOT / "seed_train.py").read_text()
PROGRAM = (ROOT / "program.md").read_text()
PARENTS = {0: SEED,
           1: SEED.replace("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.05 "),
           2: SEED.replace("WARMDOWN_RATIO = 0.5 ", "WARMDOWN_RATIO = 0.6 ")}
ORDER = [0] * 8 + [1, 2, 0, 1, 1, 2, 0, 2, 1, 1, 2, 0]


class ProviderCache:
    """The fake server's answer: an edit, with the usage a provider's prompt cache would report."""

    def __init__(self):
        self.written: set[str] = set()
        self.seen: list[str] = []
        self.usage: list[tuple[int, int]] = []   # (read from cache, written to it) of each answer
        self.lock = threading.Lock()

    def __call__(self, request: Recorded) -> Reply:
        text = auto_edit(request).text
        total = prompts_now.count_tokens(request.prompt_text)
        cached = written = 0
        with self.lock:
            if request.path == "/v1/messages":
                prefix = anthropic_prefix(request.body)
                tokens = prompts_now.count_tokens(prefix) if prefix else 0
                if tokens >= ANTHROPIC_MIN:
                    if prefix in self.written:
                        cached = tokens
                    else:
                        written = tokens
                        self.written.add(prefix)
            else:
                full = request.prompt_text
                shared = max((common_prefix(full, old) for old in self.seen), default=0)
                tokens = prompts_now.count_tokens(full[:shared])
                cached = tokens // OPENAI_STEP * OPENAI_STEP if tokens >= OPENAI_MIN else 0
                self.seen.append(full)
            self.usage.append((cached, written))
        return Reply(text, usage=(total, OUTPUT_TOKENS), cached=cached, cache_write=written)


def anthropic_prefix(body: dict) -> str:
    """The text up to the request's last cache_control breakpoint (system, then messages)."""
    blocks = []
    system = body.get("system")
    blocks += system if isinstance(system, list) else ([{"type": "text", "text": system}] if system else [])
    for message in body.get("messages", []):
        content = message.get("content")
        blocks += content if isinstance(content, list) else [{"type": "text", "text": content}]
    marked = [i for i, b in enumerate(blocks) if isinstance(b, dict) and b.get("cache_control")]
    return "".join(b.get("text", "") for b in blocks[:marked[-1] + 1]) if marked else ""


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def summary(module, number: int, **kw):
    names = {f.name for f in dataclasses.fields(module.CandidateSummary)}
    return module.CandidateSummary(number, **{k: v for k, v in kw.items() if k in names})


def lineage(module, parent: int, history: list[tuple[int, int]], sigma: float):
    """The lineage of `parent` after the proposals in `history` ((number, parent) pairs)."""
    node = summary(module, parent, hypothesis="seed" if parent == 0 else f"idea of #{parent}", val_bpb=0.9979,
                   id=parent, parent_id=None if parent == 0 else 0)
    ancestors = () if parent == 0 else (summary(module, 0, hypothesis="seed", val_bpb=0.9979, id=0),)
    told = [summary(module, n, hypothesis=f"proposal {n}: retune one constant of the schedule", val_bpb=0.9982,
                    state="COMPLETE", delta=0.0003, accepted=False, parent_id=p, operator="mutate")
            for n, p in history]
    siblings = tuple(c for c, (_, p) in zip(told, history) if p == parent)
    names = {f.name for f in dataclasses.fields(module.Lineage)}
    extra = {"ledger": tuple(told)} if "ledger" in names else {}
    return module.Lineage(node, ancestors, siblings, (), None, sigma=sigma, **extra)


def night(label: str, prompts, client, proposals: int) -> list[list]:
    rows = []
    cache = ProviderCache()
    with FakeLLMServer(default=cache) as server:
        for provider, model in (("anthropic", "claude-sonnet-4-5"), ("openai", "gpt-5")):
            url = server.anthropic_url if provider == "anthropic" else server.openai_url
            spec = client.parse_model_spec(f"{provider}:{model}@{url}")
            # the earlier client takes [input, output] prices only
            prices = PRICES if client is client_now else {k: v[:2] for k, v in PRICES.items()}
            llm = client.LLMClient(spec, prices=prices, timeout=60, max_retries=0)
            billed = recorded = 0.0
            tokens = cached = 0
            history: list[tuple[int, int]] = []
            for i in range(proposals):
                parent = ORDER[i % len(ORDER)]
                prompt = prompts.mutation_prompt(PROGRAM, PARENTS[parent], lineage(prompts, parent, history, 0.0009),
                                                 FACTS)
                marks = {"stable_chars": prompt.stable_chars, "cache_key": prompt.cache_key} \
                    if hasattr(prompt, "stable_chars") else {}
                reply = llm.complete(prompt.system, list(prompt.messages), **marks)
                read, written = cache.usage[-1]
                billed += client_now.cost_usd(client_now.parse_model_spec(f"{provider}:{model}"), reply.tokens_in,
                                              reply.tokens_out, PRICES, tokens_cached=read, tokens_cache_write=written)
                recorded += reply.cost_usd
                tokens += reply.tokens_in
                cached += read
                history.append((10 + i, parent))
            rows.append([label, f"{provider}:{model}", proposals, f"{tokens / proposals:,.0f}",
                         f"{100 * cached / tokens:.0f}%", f"${billed / proposals:.4f}", f"${recorded / proposals:.4f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="7725015")
    parser.add_argument("--proposals", type=int, default=20)
    args = parser.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ.pop("ANTHROPIC_API_KEY", None)
    header(f"LLM cost per proposal, {args.proposals} proposals, seed_train-sized parents")
    old_prompts = load(args.before, "evo/operators/prompts.py", "prompts_before")
    old_client = load(args.before, "evo/operators/llm/client.py", "client_before")
    rows = night(f"before ({args.before})", old_prompts, old_client, args.proposals) + \
        night("after", prompts_now, client_now, args.proposals)
    table(["prompts and client", "model", "proposals", "prompt tokens per proposal", "read from cache",
           "billed $ per proposal", "evo recorded $ per proposal"], rows)


if __name__ == "__main__":
    main()
