"""`LLMOperator`: mutation, crossover (3-way merge first, the LLM on conflict) and fix proposals
through one or more LLMs, with lineage memory, one repair round, and every call recorded.

The engine hands two parents (the same one twice when the population has one member). With
probability `crossover_rate` and two distinct parents the operator crosses them over:

  1. their lowest common ancestor (LCA) is found from both lineages; a `git merge-file` of the two
     parents against it that is clean and valid becomes a candidate with operator `merge` and no
     LLM call;
  2. otherwise (a conflict, or no ancestor known) the LLM gets both parents' diffs against the LCA
     and writes one file: operator `crossover`.

Otherwise it mutates the first parent (operator `mutate`). Each reply is parsed, applied and
validated before it leaves; an unusable one gets ONE repair round with the error shown to the
model; a second failure raises OperatorError (the engine archives FAIL(invalid), no slot time).
Every call is in `Proposal.extra["llm_calls"]`, or `exc.llm_calls` on failure, as dicts with the
archive's LLMCall fields: model, purpose, tokens_in, tokens_out, latency_s, cost_usd, error,
prompt, response. LLMUnavailable (the API is down) propagates unchanged, with its calls.

Concurrent proposals from one parent get different directions (`prompts.directions`, from the
research program's list), in turn; each prompt says how bold to be from the parent's `heat` (the
chain's temperature in σ units). Prompts are sent with their cacheable prefix marked.

Model choice with several models: evo.operators.llm.bandit (fixed `weights`, else Thompson
sampling on improvement per dollar, fed by `record_outcome`).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from evo.core.lineage import lowest_common_ancestor
from evo.operators.base import Operator, OperatorError, OperatorUnavailable, Parent, Proposal
from evo.operators.edits import EditError, apply_reply, parse_reply
from evo.operators.llm.bandit import DEFAULT_SLOT_COST_USD, TYPICAL_CALL_TOKENS, ModelBandit
from evo.operators.llm.client import LLMClient, LLMReply, ModelSettings, ModelSpec, clip, cost_usd, normalize_prices
from evo.operators.merge import merge3
from evo.operators.prompts import (DEFAULT_PROMPT_TOKENS, CandidateSummary, Lineage, Prompt, crossover_prompt,
                                   directions, fix_prompt, mutation_prompt, repair_message)
from evo.operators.validate import validate_child


@dataclass
class LLMContext:
    """What the operator needs from the run, provided by the engine's side.

    program: program.md's text. facts: hardware and budget facts shown in every prompt, e.g.
    {"preset": "gpu", "device": "NVIDIA H100 80GB", "TIME_BUDGET": "300 s of training", "slots": "8"}.
    lineage(candidate_id) -> Lineage: the candidate as `node` (with log_tail, fail_reason, metrics,
    id and parent_id), its first-parent ancestors oldest first (each with id and parent_id, for the
    crossover's LCA), its children so far (siblings of the child to make), recent failures near
    it, the run's best and the noise σ. code(candidate_id) -> str: any candidate's train.py (the
    LCA's, for merges; a crashed child's parent's, for fix diffs); None disables both uses.
    """
    program: str
    facts: dict[str, str]
    lineage: Callable[[int], Lineage]
    code: Callable[[int], str] | None = None


class LLMOperator(Operator):
    name = "mutate"
    n_parents = 2
    repairs = True

    def __init__(self, models: Sequence[ModelSpec], context: LLMContext, clients: dict | None = None,
                 crossover_rate: float = 0.2, prompt_token_budget: int = DEFAULT_PROMPT_TOKENS,
                 prices: Mapping | None = None, *, weights: Sequence[float] | None = None,
                 slot_cost_usd: float = DEFAULT_SLOT_COST_USD, client_options: Mapping | None = None,
                 settings: Mapping[str, ModelSettings] | None = None):
        """models: at least one. clients: {str(spec): object with complete(system, messages) ->
        LLMReply}; models without one get an LLMClient(spec, prices=prices, settings=settings[str(spec)],
        **client_options), which raises OperatorError at once when its API key is missing."""
        if not models:
            raise OperatorError("the LLM operator needs at least one --model.")
        if not 0.0 <= crossover_rate <= 1.0:
            raise OperatorError(f"crossover rate must be between 0 and 1, not {crossover_rate}.")
        if weights is not None and (len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise OperatorError("model weights must be one non-negative number per model, not all zero.")
        self.models = list(models)
        self.context = context
        self.crossover_rate = crossover_rate
        self.budget = prompt_token_budget
        self.prices = normalize_prices(prices)
        clients = dict(clients or {})
        for spec in self.models:
            if str(spec) not in clients:
                clients[str(spec)] = LLMClient(spec, prices=self.prices, settings=(settings or {}).get(str(spec)),
                                               **dict(client_options or {}))
        self.clients = clients
        self.directions = directions(context.program)
        self._asked: dict[int, int] = {}   # proposals asked per parent, for the directions' turn
        self._asked_lock = threading.Lock()
        self.bandit = ModelBandit([str(s) for s in self.models],
                                  [cost_usd(s, *TYPICAL_CALL_TOKENS, self.prices) for s in self.models],
                                  weights=weights, slot_cost_usd=slot_cost_usd)

    # ----- model choice ---------------------------------------------------------------------

    def record_outcome(self, model: str | None, won: float, cost: float) -> None:
        """Feed the bandit: a proposal by `model` (Proposal.model) earned `won` in [0, 1]
        (bandit.reward); `cost` is what its LLM calls cost in USD. Unknown models (merges have
        none) are ignored."""
        self.bandit.record(model, won, cost)

    def choose_model(self, rng: random.Random) -> ModelSpec:
        return self.models[self.bandit.choose(rng)]

    def arm_stats(self) -> dict[str, dict]:
        """The bandit's state per model, for status views."""
        return self.bandit.stats()

    # ----- the operator interface -------------------------------------------------------------

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        a = parents[0]
        b = parents[1] if len(parents) > 1 else None
        if b is not None and b.id != a.id and b.code != a.code and self.crossover_rate > 0 \
                and rng.random() < self.crossover_rate:
            return self._crossover(a, b, rng)
        return self._mutate(a, rng)

    def propose_fix(self, failed, child: CandidateSummary | random.Random | None = None,
                    parent: Parent | None = None, rng: random.Random | None = None) -> Proposal:
        """A repair of a crashed child; hypothesis "fix: ...", extra operator "mutate", fix True.

        Two call forms: propose_fix(child_code: str, child: CandidateSummary, parent: Parent | None,
        rng), or the engine's propose_fix(failed: Parent, rng), which looks the crashed child up
        through context.lineage (its log tail, fail reason, parent)."""
        if isinstance(failed, Parent):
            rng = child if isinstance(child, random.Random) else (rng or random.Random())
            summary = self.context.lineage(failed.id).node
            child_code = failed.code
            parent_code = None
            if self.context.code is not None and summary.parent_id is not None:
                parent_code = self.context.code(summary.parent_id)
        else:
            child_code, summary = failed, child
            parent_code = parent.code if parent is not None else None
            rng = rng or random.Random()
        if not isinstance(summary, CandidateSummary):
            raise TypeError("propose_fix needs the crashed child's CandidateSummary")
        prompt = fix_prompt(self.context.program, child_code, summary, self.context.facts, parent_code, self.budget)
        return self._ask(self.choose_model(rng), prompt, child_code, "fix",
                         {"operator": "mutate", "fix": True, "parent2_used": False})

    # ----- mutation and crossover ---------------------------------------------------------------

    def _focus(self, parent: Parent) -> str:
        """This proposal's direction: the next one in turn for this parent, so proposals asked at
        the same time from one parent (a wave over many slots) never share one."""
        with self._asked_lock:
            k = self._asked.get(parent.id, 0)
            self._asked[parent.id] = k + 1
        return self.directions[(parent.number + k) % len(self.directions)]

    def _mutate(self, a: Parent, rng: random.Random) -> Proposal:
        lineage = self.context.lineage(a.id)
        prompt = mutation_prompt(self.context.program, a.code, lineage, self.context.facts, self.budget,
                                 focus=self._focus(a), heat=a.heat)
        return self._ask(self.choose_model(rng), prompt, a.code, "mutate", {"operator": "mutate", "parent2_used": False})

    def _crossover(self, a: Parent, b: Parent, rng: random.Random) -> Proposal:
        la, lb = self.context.lineage(a.id), self.context.lineage(b.id)
        summaries = {c.id: c for c in (la.node, lb.node, *la.ancestors, *lb.ancestors) if c.id is not None}
        parent_map = {cid: tuple(p for p in (c.parent_id, c.parent2_id) if p is not None) for cid, c in summaries.items()}
        parent_map.setdefault(a.id, ())
        parent_map.setdefault(b.id, ())
        lca_id = lowest_common_ancestor(a.id, b.id, parent_map)
        if lca_id in (a.id, b.id):
            # one descends from the other: its code already holds both ideas; there is nothing to combine
            return self._mutate(a, rng)
        ancestor = summaries.get(lca_id) if lca_id is not None else None
        base = self.context.code(lca_id) if (self.context.code is not None and lca_id is not None) else None
        merge_error = ""
        if base is not None:
            text, clean = merge3(base, a.code, b.code, (f"A #{a.number}", f"ancestor #{ancestor.number if ancestor else '?'}",
                                                       f"B #{b.number}"))
            if clean and text in (a.code, b.code):
                return self._mutate(a, rng)  # one side's changes already hold the other's
            if clean:
                try:
                    validate_child(text, a.code)
                except EditError as e:
                    merge_error = str(e)
                else:
                    return self._merged(text, a, b, la, lb, ancestor)
        prompt = crossover_prompt(self.context.program, a.code, b.code, la, lb, self.context.facts,
                                  ancestor_code=base, ancestor=ancestor, budget=self.budget)
        extra = {"operator": "crossover", "parent2_used": True}
        if merge_error:
            extra["merge_error"] = merge_error
        return self._ask(self.choose_model(rng), prompt, a.code, "crossover", extra)

    def _merged(self, text: str, a: Parent, b: Parent, la: Lineage, lb: Lineage,
                ancestor: CandidateSummary | None) -> Proposal:
        since = ancestor.number if ancestor is not None else -1

        def steps(lineage: Lineage) -> list[str]:
            path = [c for c in lineage.ancestors if c.number > since] + [lineage.node]
            return [f"#{c.number}: {c.hypothesis}" for c in path if c.hypothesis]

        hypothesis = f"merge #{a.number} + #{b.number}: {_brief(a.hypothesis)} + {_brief(b.hypothesis)}"
        rationale = (f"A clean 3-way merge (git merge-file) of #{a.number} and #{b.number} against their common "
                     f"ancestor #{since}: both lines' changes combined, no LLM call.\n"
                     f"A's steps: {'; '.join(steps(la)) or '-'}\nB's steps: {'; '.join(steps(lb)) or '-'}")
        return Proposal(code=text, hypothesis=hypothesis, rationale=rationale, model=None,
                        extra={"operator": "merge", "parent2_used": True, "llm_calls": []})

    # ----- one exchange with the model: ask, apply, validate, one repair ------------------------

    def _ask(self, spec: ModelSpec, prompt: Prompt, base_code: str, purpose: str, extra: dict) -> Proposal:
        calls: list[dict] = []
        operator = extra["operator"]
        reply = self._call(spec, prompt, purpose, calls, prompt.text(), operator)
        try:
            code, parsed = self._use(reply, base_code)
        except EditError as first:
            calls[-1]["error"] = f"unusable reply: {first}"
            repair = prompt.with_repair(reply.text, str(first))
            reply = self._call(spec, repair, "repair", calls,
                               "[repair round: the previous call's prompt and reply, then]\n" + repair_message(str(first)),
                               operator)
            try:
                code, parsed = self._use(reply, base_code)
            except EditError as second:
                calls[-1]["error"] = f"unusable reply: {second}"
                raise _failure(OperatorError(f"{purpose} by {spec.model} gave no usable edit after a repair round: "
                                             f"{second}"), calls, operator, spec) from None
        hypothesis = parsed.hypothesis
        if purpose == "fix" and not hypothesis.lower().startswith("fix:"):
            hypothesis = f"fix: {hypothesis}"
        return Proposal(code=code, hypothesis=hypothesis, rationale=parsed.rationale, model=str(spec),
                        extra={**extra, "llm_calls": calls})

    @staticmethod
    def _use(reply: LLMReply, base_code: str):
        parsed = parse_reply(reply.text, truncated=reply.truncated)
        code = apply_reply(base_code, parsed)
        validate_child(code, base_code)
        return code, parsed

    def _call(self, spec: ModelSpec, prompt: Prompt, purpose: str, calls: list[dict], audit_prompt: str,
              operator: str) -> LLMReply:
        client = self.clients[str(spec)]
        started = time.monotonic()
        try:
            reply = client.complete(prompt.system, list(prompt.messages), stable_chars=prompt.stable_chars,
                                    cache_key=prompt.cache_key or None)
        except OperatorUnavailable as e:  # LLMUnavailable: propagates unchanged, with the calls so far
            calls.append(_record(spec, purpose, audit_prompt, error=str(e), latency=time.monotonic() - started))
            e.llm_calls = list(calls)
            raise
        except OperatorError as e:  # the API refused the request (bad key, unknown model, prompt too long)
            calls.append(_record(spec, purpose, audit_prompt, error=str(e), latency=time.monotonic() - started))
            raise _failure(OperatorError(str(e)), calls, operator, spec) from None
        calls.append(_record(spec, purpose, audit_prompt, reply=reply))
        return reply


def _failure(error: OperatorError, calls: list[dict], operator: str, spec: ModelSpec) -> OperatorError:
    """An OperatorError carrying the calls made (for the archive), the operator it was for and the
    model that failed (the bandit counts it as a loss)."""
    error.llm_calls = list(calls)
    error.operator = operator
    error.model = str(spec)
    return error


def _record(spec: ModelSpec, purpose: str, prompt: str, reply: LLMReply | None = None, error: str | None = None,
            latency: float = 0.0) -> dict:
    """One LLMCall row's fields (evo.storage.archive.LLMCall)."""
    if reply is None:
        return dict(model=str(spec), purpose=purpose, tokens_in=0, tokens_out=0, latency_s=latency, cost_usd=0.0,
                    error=error, prompt=clip(prompt), response=None)
    return dict(model=str(spec), purpose=purpose, tokens_in=reply.tokens_in, tokens_out=reply.tokens_out,
                latency_s=reply.latency_s, cost_usd=reply.cost_usd,
                error=_call_warning(reply),
                prompt=clip(prompt), response=clip(reply.text))


def _call_warning(reply: LLMReply) -> str | None:
    """What the call record should flag about a reply that came back."""
    if reply.truncated:
        return "truncated at the output-token limit"
    if getattr(reply, "prompt_truncated", False):
        return ("the server counted far fewer prompt tokens than were sent: it truncates the prompt (raise its "
                "context length, e.g. Ollama's num_ctx)")
    return None


def _brief(text: str, limit: int = 60) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
