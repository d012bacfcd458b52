"""LLM operator benchmark: prompt tokens per proposal for a seed_train.py-sized parent with 50
ancestors (plus 10 recent failures with 20-line log tails and 8 siblings already tried), at
several prompt budgets, and the crossover, fix and repair prompts beside it. Pure: no LLM, no GPU.

    python bench/llm_prompt_tokens.py

Tokens are counted as the operator counts them: tiktoken when its o200k_base/cl100k_base file is
in tiktoken's local cache, else the offline approximation in evo/operators/prompts.py (named in
the output). Record results in docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import header, table  # noqa: E402

from evo.operators.prompts import (DEFAULT_PROMPT_TOKENS, CandidateSummary, Lineage, count_tokens,  # noqa: E402
                                   crossover_prompt, fix_prompt, mutation_prompt, token_counter)

SEED = (ROOT / "seed_train.py").read_text()
PROGRAM = (ROOT / "program.md").read_text()
FACTS = {"preset": "gpu", "device": "NVIDIA H100 80GB HBM3 (1 per slot, 8 slots)",
         "TIME_BUDGET": "300 s of training per candidate, then the locked evaluation"}
IDEAS = ["raise MATRIX_LR to 0.05", "depth 10 with a narrower MLP", "warmdown over the last 60% of the budget",
         "value embeddings on every other layer only", "Muon momentum warmup over 20% of the budget",
         "logit soft-cap 20 instead of 15", "halve the device batch and accumulate twice",
         "QK-norm scale as a learned scalar", "sliding window SSSL instead of SSL", "AdamW betas (0.9, 0.95) for embeddings"]
TRACEBACK = ["Traceback (most recent call last):", '  File "train.py", line 612, in <module>',
             "    loss = model(x, y)", '  File "torch/nn/modules/module.py", line 1751, in _wrapped_call_impl',
             "    return self._call_impl(*args, **kwargs)", '  File "train.py", line 301, in forward',
             "    q, k = norm(q), norm(k)", '  File "train.py", line 240, in apply_rotary_emb',
             "    y1 = x1 * cos + x2 * sin",
             "RuntimeError: The size of tensor a (64) must match the size of tensor b (128) at non-singleton dimension 3"]


def lineage(n_ancestors: int = 50, n_failures: int = 10, n_siblings: int = 8) -> Lineage:
    ancestors = tuple(CandidateSummary(i, IDEAS[i % len(IDEAS)] + f" (step {i})", 1.0 - 0.0004 * i, None, "COMPLETE",
                                       None, "", "mutate" if i else "seed", id=i, parent_id=i - 1 if i else None,
                                       delta=-0.0004 if i else None, accepted=True) for i in range(n_ancestors))
    failures = tuple(CandidateSummary(300 + i, IDEAS[(i + 3) % len(IDEAS)], None, None, "FAIL", "crash",
                                      "\n".join([f"step {s:05d} | loss: 3.{s:04d} | elapsed: {s}s" for s in range(10)] + TRACEBACK),
                                      "mutate", fail_detail="exit status 1: RuntimeError: The size of tensor a (64) ...")
                     for i in range(n_failures))
    siblings = tuple(CandidateSummary(400 + i, IDEAS[(i + 5) % len(IDEAS)], 0.9801 + 0.0002 * i, None, "COMPLETE", None,
                                      "", "mutate", delta=0.0001 * i, accepted=i % 2 == 0) for i in range(n_siblings))
    node = CandidateSummary(n_ancestors, "shorter warmup, longer warmdown", 0.9800, 0.0003, "COMPLETE", None, "", "mutate",
                            id=n_ancestors, parent_id=n_ancestors - 1, delta=-0.0012, accepted=True, n_evals=2,
                            metrics={"peak_vram_mb": 44123, "num_steps": 1710, "num_params_M": 50.3, "mfu_percent": 41.2})
    return Lineage(node, ancestors, siblings, failures, best=node, sigma=0.0003)


def main() -> None:
    header("LLM operator: prompt tokens per proposal")
    name, _ = token_counter()
    lin = lineage()
    print(f"token counter: {name}")
    print(f"parent: seed_train.py, {len(SEED):,} chars, {count_tokens(SEED):,} tokens (len/4 = {len(SEED) // 4:,}); "
          f"program.md {count_tokens(PROGRAM):,} tokens; 50 ancestors, 10 failures with 20-line log tails, 8 siblings\n")
    rows = []
    for budget in (12_000, 16_000, 20_000, DEFAULT_PROMPT_TOKENS, 32_000):
        t0 = time.perf_counter()
        p = mutation_prompt(PROGRAM, SEED, lin, FACTS, budget=budget)
        ms = (time.perf_counter() - t0) * 1000
        total = 50 + 10 + 8
        rows.append([f"{budget:,}" + (" (default)" if budget == DEFAULT_PROMPT_TOKENS else ""), f"{p.tokens:,}",
                     f"{total - p.omitted}/{total}", f"{len(p.text()):,}", f"{ms:.0f}"])
    table(["budget", "mutation prompt tokens", "history entries kept", "chars", "build ms"], rows,
          "Mutation prompt (system + user), history trimmed oldest first to fit:")

    a = SEED.replace("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.05 ").replace("NS_STEPS = 5 ", "NS_STEPS = 4 ")
    b = SEED.replace("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.03 ").replace("WARMDOWN_RATIO = 0.5 ", "WARMDOWN_RATIO = 0.7 ")
    lb = lineage(45, 0, 0)
    cross = crossover_prompt(PROGRAM, a, b, lin, lb, FACTS, ancestor_code=SEED, ancestor=lin.ancestors[40])
    crashed = CandidateSummary(99, "rotary on half the head dim", None, None, "FAIL", "crash", "\n".join(TRACEBACK * 3), "mutate")
    fix = fix_prompt(PROGRAM, a, crashed, FACTS, parent_code=SEED)
    mut = mutation_prompt(PROGRAM, SEED, lin, FACTS)
    repair = mut.with_repair("TITLE: x\n" + "<<<<<<< SEARCH\nMATRIX_LR = 0.4\n=======\nMATRIX_LR = 0.5\n>>>>>>> REPLACE\n",
                             "the SEARCH block matches nothing in train.py; copy the lines exactly as they are in the current file.")
    table(["prompt", "tokens", "of which parent train.py", "of which program.md"],
          [["mutation (default budget)", f"{mut.tokens:,}", f"{count_tokens(SEED):,}", f"{count_tokens(PROGRAM):,}"],
           ["repair round (mutation + reply + error)", f"{repair.tokens:,}", "", ""],
           ["crossover (2 diffs vs LCA + parent A)", f"{cross.tokens:,}", f"{count_tokens(a):,}", f"{count_tokens(PROGRAM):,}"],
           ["fix (crashed code + diff + log tail)", f"{fix.tokens:,}", f"{count_tokens(a):,}", f"{count_tokens(PROGRAM):,}"]],
          "Per-purpose prompt size at the default budget:")


if __name__ == "__main__":
    main()
