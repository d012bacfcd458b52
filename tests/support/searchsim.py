"""A fast simulation of one night of search: the engine's decision rules (evo.core: selection,
decide, the temperature schedule, pooled σ, the tempering swap) driven by a discrete-event loop
over N asynchronous slots, without SQLite, threads or subprocesses. A 800-evaluation night takes
well under a second, so the benchmark can afford hundreds of seeds per cell.

What is simulated: each evaluation takes EVAL_SECONDS ± EVAL_SPREAD (a crash CRASH_SECONDS), each
proposal an LLM latency (log-normal around LLM_SECONDS), and the engine keeps one proposal in
flight per slot plus LOOKAHEAD, asked with the parents known at asking time: with N slots a child's
parent can be up to N decisions stale, as in the real engine. Duplicates (code already seen) cost
no evaluation. Every searcher gets exactly `budget` evaluations: seed replicates, confirmations
and the final re-measures count.

The real Engine makes the same decisions with the same rules (tests/test_searchsim.py compares the
two); what this loop re-implements is only the bookkeeping the archive does for the engine.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from evo.core import acceptance, decision, selection
from tests.support import tempering
from evo.storage import CHOOSING_REPLICATE, REPORTING_REPLICATE
from tests.support.landscapes import Landscape

EVAL_SECONDS, EVAL_SPREAD = 300.0, 0.05
CRASH_SECONDS = 30.0
LLM_SECONDS, LLM_SPREAD = 30.0, 0.6      # median and log-sd of one proposal's latency
LOOKAHEAD = 1
EVAL_SEED_BASE = 42
DUPLICATES_IN_A_ROW = 100                # a converged search proposes only code it has seen: it stops


@dataclass(frozen=True)
class Searcher:
    """One search strategy. mode: "population" (evo's steady-state population, greedy as population
    1 at T = 0), "chains" (one chain per slot, parallel tempering over `ladder`; at T = 0 without
    swaps: independent greedy runs), "random" (children of the seed)."""
    name: str
    mode: str = "population"
    population: int | None = None        # None: selection.default_population(budget per slot)
    temperature: float | str = "auto"    # "auto": `sigmas` · σ̂
    sigmas: float | None = None          # None: acceptance.auto_sigmas(budget), as the engine resolves it
    cooling: str = "hold"
    replicates: int = 3
    confirm: bool = True
    elite_share: float = selection.ELITE_SHARE
    follow: bool = True
    pool_sigma: bool = True
    remeasure: bool = True
    swaps: bool = True


SEARCHERS = {s.name: s for s in (
    Searcher("evo"),
    Searcher("evo-pt", mode="chains"),
    Searcher("evo-v1", population=8, sigmas=acceptance.AUTO_SIGMAS, cooling="exp", elite_share=0.0, follow=False, pool_sigma=False, remeasure=False),
    Searcher("greedy", population=1, temperature=0.0, replicates=1, confirm=False, elite_share=0.0, follow=False,
             remeasure=False),
    Searcher("greedy-confirm", population=1, temperature=0.0, replicates=1, confirm=True, elite_share=0.0,
             follow=False, remeasure=False),
    Searcher("greedy-independent", mode="chains", temperature=0.0, replicates=1, confirm=False, swaps=False),
    Searcher("random", mode="random", replicates=1, confirm=False, remeasure=False),
)}


@dataclass
class Cand:
    id: int
    code: str
    parent: int | None
    chain: int | None = None
    values: list[float] = field(default_factory=list)     # completed measurements
    post: list[float] = field(default_factory=list)       # the final re-measure's choosing evaluation
    final: list[float] = field(default_factory=list)      # its reporting evaluations, once chosen
    pending: int = 0
    failed: bool = False
    accepted: bool | None = None

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)


@dataclass
class Result:
    true: float           # the returned best's noise-free value
    reported: float       # what the searcher says its best measures
    seed_true: float
    evaluations: int
    crossed: bool | None
    sigma_hat: float | None
    hours: float          # simulated wall time of the night


class Night:
    """One searcher's night on one landscape instance."""

    def __init__(self, landscape: Landscape, searcher: Searcher, budget: int, slots: int, bench_seed: int):
        self.ls, self.s, self.budget, self.n_slots = landscape, searcher, budget, slots
        self.rng = random.Random(f"{searcher.name}:{landscape.name}:{bench_seed}")
        self.clock_rng = random.Random(f"clock:{landscape.name}:{bench_seed}:{searcher.name}")
        self.now = 0.0
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = 0
        self.cands: list[Cand] = []
        self.by_code: dict[str, Cand] = {}
        self.queue: list[tuple[Cand, int]] = []           # evaluations waiting for a slot
        self.busy = 0
        self.started = 0                                  # evaluations started
        self.asked = 0                                    # proposals in flight
        self.proposals = 0
        self.duplicates = 0                               # proposals in a row that repeated known code
        per_slot = budget / slots
        self.capacity = searcher.population or selection.default_population(per_slot)
        top = min(selection.REMEASURE_TOP, self.capacity) if searcher.mode == "population" else selection.REMEASURE_TOP
        self.reserve = top + selection.REMEASURE_REPORTING if searcher.remeasure else 0
        self.stage = 0                                    # of the final re-measure: 1 choosing, 2 reporting
        self.chosen: Cand | None = None
        self.members: dict[int, Cand] = {}                # population mode
        self.follow = selection.FollowThrough()
        k = slots if searcher.mode == "chains" else 0
        self.ladder = [0.0] * k if searcher.temperature == 0 else tempering.ladder(k)
        self.chains: list[Cand | None] = [None] * k       # chain i's state, at temperature ladder[i]
        self.chain_asked = [0] * k
        self.seed_sigma: float | None = None
        self.replicated: dict[int, Cand] = {}             # candidates measured twice or more (σ̂'s groups)
        self.measured = 0
        self._sigma_at, self._sigma = -1, None

    # ----- the loop -------------------------------------------------------------------------------

    def run(self) -> Result:
        seed = self._new(self.ls.seed_code(), None)
        for r in range(self.s.replicates):
            self._queue(seed, r)
        self._dispatch()
        while self.events:
            self.now, _, kind, payload = heapq.heappop(self.events)
            if kind == "evaluated":
                self.busy -= 1
                self._evaluated(*payload)  # type: ignore[misc]
            else:
                self.asked -= 1
                self._proposed(*payload)  # type: ignore[misc]
            self._propose()
            self._dispatch()
            if not self.events:
                self._remeasure()
        return self._result(seed)

    def _at(self, seconds: float, kind: str, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (self.now + seconds, self.seq, kind, payload))

    def _new(self, code: str, parent: int | None, chain: int | None = None) -> Cand:
        c = Cand(len(self.cands), code, parent, chain)
        self.cands.append(c)
        self.by_code[code] = c
        return c

    def _queue(self, cand: Cand, replicate: int) -> None:
        cand.pending += 1
        self.queue.append((cand, replicate))

    def _dispatch(self) -> None:
        while self.queue and self.busy < self.n_slots and self.started < self.budget:
            cand, replicate = self.queue.pop(0)
            value = self.ls.measure(cand.code, EVAL_SEED_BASE + replicate)
            seconds = CRASH_SECONDS if value is None else \
                EVAL_SECONDS * (1 + EVAL_SPREAD * (2 * self.clock_rng.random() - 1))
            self.busy += 1
            self.started += 1
            self._at(seconds, "evaluated", (cand, value, replicate))
        for cand, _ in self.queue if self.started >= self.budget else ():
            cand.pending -= 1  # the budget is spent: what still waits is never measured
        if self.started >= self.budget:
            self.queue.clear()

    # ----- proposals ------------------------------------------------------------------------------

    def _may_propose(self) -> bool:
        committed = self.started + len(self.queue) + self.asked
        return committed < self.budget - self.reserve and self._ready() and self.duplicates < DUPLICATES_IN_A_ROW

    def _ready(self) -> bool:
        if self.s.mode == "population":
            return bool(self.members)
        if self.s.mode == "chains":
            return any(c is not None for c in self.chains)
        return self.cands[0].accepted is not None

    def _propose(self) -> None:
        while self.asked < self.n_slots + LOOKAHEAD - len(self.queue) and self._may_propose():
            child_rng = random.Random(self.rng.getrandbits(63))
            chain = None
            if self.s.mode == "population":
                parents = [self.members[m.id] for m in self._parents()]
            elif self.s.mode == "chains":
                chain = min(range(len(self.chains)), key=lambda i: (self.chain_asked[i], i))
                state = self.chains[chain] or self.cands[0]
                parents = [state]
                self.chain_asked[chain] += 1
            else:
                parents = [self.cands[0]]
            code = self.ls.propose([p.code for p in parents], child_rng)
            self.asked += 1
            self.proposals += 1
            latency = LLM_SECONDS * math.exp(LLM_SPREAD * self.clock_rng.gauss(0.0, 1.0))
            self._at(latency, "proposed", (code, parents[0].id, chain))

    def _parents(self) -> list[selection.Member]:
        members = self._member_list()
        n = self.ls.n_parents if len(members) > 1 else 1
        greedy = self.capacity == 1 or self._temperature() == 0
        follow = self.follow.member if self.s.follow and self.follow.member in self.members else None
        return selection.select_parents(members, n, self.rng, elite_share=0.0 if greedy else self.s.elite_share,
                                        follow=follow)

    def _proposed(self, code: str, parent: int, chain: int | None) -> None:
        if chain is not None:
            self.chain_asked[chain] -= 1
        if code in self.by_code:
            self.duplicates += 1
            return  # a duplicate: pruned at no evaluation
        self.duplicates = 0
        child = self._new(code, parent, chain)
        self._queue(child, 0)

    # ----- decisions ------------------------------------------------------------------------------

    def _evaluated(self, cand: Cand, value: float | None, replicate: int) -> None:
        cand.pending -= 1
        if value is None:
            cand.failed = True
        else:
            (cand.values if cand.accepted is None else cand.final if cand is self.chosen else cand.post).append(value)
            self.measured += 1
            if len(cand.values) + len(cand.post) + len(cand.final) >= 2:
                self.replicated[cand.id] = cand
        if cand.pending or cand.accepted is not None:
            return
        if cand.id == 0:
            self._decide_seed(cand)
        elif cand.failed or not cand.values:
            cand.accepted = False
            self.ls.feedback(cand.code, self.cands[cand.parent].code, False)  # type: ignore[index]
        elif self.s.mode == "random":
            cand.accepted = True
        elif self.s.mode == "chains":
            self._decide_chain(cand)
        else:
            self._decide_member(cand)

    def _decide_seed(self, seed: Cand) -> None:
        seed.accepted = True
        self.seed_sigma = acceptance.noise_sigma(seed.values)
        if self.s.mode == "population":
            self.members[seed.id] = seed
        elif self.s.mode == "chains":
            self.chains = [seed] * len(self.chains)

    def sigma(self) -> float | None:
        if not self.s.pool_sigma:
            return self.seed_sigma
        if self._sigma_at != self.measured:  # σ̂ changes only with a new measurement
            self._sigma_at = self.measured
            self._sigma = acceptance.pooled_sigma([c.values + c.post + c.final for c in self.replicated.values()])
        return self._sigma

    def _temperature(self, sigmas: float | None = None) -> float:
        """T now: `sigmas` · σ̂ (the searcher's own by default) on the cooling schedule (the engine's
        `--temperature auto`)."""
        if self.s.temperature != "auto":
            return float(self.s.temperature)
        sigma = self.sigma()
        sigmas = sigmas or self.s.sigmas or acceptance.auto_sigmas(self.budget)
        t0 = sigmas * sigma if sigma is not None else 0.0
        return acceptance.temperature_at(t0, min(1.0, self.started / self.budget), self.s.cooling)

    def _member_list(self) -> list[selection.Member]:
        return [selection.Member(c.id, c.mean) for c in self.members.values()]

    def _confirming(self, cand: Cand, best: float) -> bool:
        """Queue a confirmation for a would-be new best while the budget allows one."""
        if not (self.s.confirm and len(cand.values) < 2 and cand.mean < best):
            return False
        if self.started + len(self.queue) >= self.budget - self.reserve:
            return False
        self._queue(cand, len(cand.values))
        return True

    def _decide_member(self, cand: Cand) -> None:
        members = self._member_list()
        elite = selection.best(members)
        if self._confirming(cand, elite.score):
            return
        child = decision.Child(cand.id, cand.id, cand.mean, cand.parent, len(cand.values))
        verdict = decision.decide(child, members, elite, self._temperature(), self.rng.random, confirm=False,
                                  population=self.capacity, numbers=_Ids())
        accepted = isinstance(verdict, decision.Accept)
        cand.accepted = accepted
        if accepted:
            for gone in verdict.leaving:  # type: ignore[union-attr]
                self.members.pop(gone, None)
            self.members[cand.id] = cand
        self.follow = selection.follow_through(self.follow, parent_id=cand.parent, child_id=cand.id, accepted=accepted,
                                               worse=accepted and (verdict.delta or 0.0) > 0)
        self.ls.feedback(cand.code, self.cands[cand.parent].code, accepted)  # type: ignore[index]

    def _decide_chain(self, cand: Cand) -> None:
        i = cand.chain
        state = self.chains[i]  # type: ignore[index]
        best = min((c.mean for c in self.cands if c.accepted and c.values), default=math.inf)
        if self._confirming(cand, best):
            return
        scale = self._temperature(sigmas=1.0)  # the ladder is in units of σ̂
        ok, _ = acceptance.accept(cand.mean - state.mean, self.ladder[i] * scale, self.rng.random())  # type: ignore[union-attr,index]
        cand.accepted = ok
        if ok:
            self.chains[i] = cand  # type: ignore[index]
        self.ls.feedback(cand.code, self.cands[cand.parent].code, ok)  # type: ignore[index]
        if self.s.swaps and len(self.chains) > 1 and scale > 0:
            j = self.rng.randrange(len(self.chains) - 1)
            a, b = self.chains[j], self.chains[j + 1]
            p = tempering.swap_probability(a.mean, b.mean, self.ladder[j] * scale, self.ladder[j + 1] * scale)  # type: ignore[union-attr]
            if self.rng.random() < p:
                self.chains[j], self.chains[j + 1] = b, a

    # ----- the end ----------------------------------------------------------------------------------

    def _finalists(self) -> list[Cand]:
        pool = self.members.values() if self.s.mode == "population" else [c for c in self.cands if c.accepted and c.values]
        return sorted(pool, key=lambda c: (c.mean, c.id))

    def _remeasure(self) -> None:
        """The engine's final re-measure (selection.remeasure_plan): the top few by mean measured once
        more each (choosing), then the chosen one, the best by its mean over every evaluation, measured
        REPORTING times more (reporting): the returned best's value comes from evaluations made after
        it was chosen, so it carries no winner's curse."""
        if not self.s.remeasure or self.stage == 2:
            return
        finalists = self._finalists()[:selection.REMEASURE_TOP]
        if self.stage == 0:
            self.stage = 1
            for cand in finalists:
                self._queue(cand, CHOOSING_REPLICATE)
        else:
            self.stage = 2
            chosen = min(finalists, key=lambda c: (_mean(c.values + c.post), c.id))
            self.chosen = chosen
            for k in range(selection.REMEASURE_REPORTING):
                self._queue(chosen, REPORTING_REPLICATE + k)
        self._dispatch()

    def _result(self, seed: Cand) -> Result:
        if self.s.mode == "random":
            done = [c for c in self.cands if c.values and not c.failed]
            best = min(done, key=lambda c: (c.mean, c.id))
            reported = best.mean
        elif self.chosen is not None and self.chosen.final:
            best, reported = self.chosen, _mean(self.chosen.final)
        else:
            best = self._finalists()[0]
            reported = best.mean
        return Result(self.ls.true(best.code), reported, self.ls.true(seed.code), self.started,
                      self.ls.crossed(best.code), self.sigma(), self.now / 3600.0)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


class _Ids(dict):
    """decide() names members by candidate number; here a candidate's number is its id."""

    def __missing__(self, key: int) -> int:
        return key


def simulate(landscape: Landscape, searcher: str | Searcher, budget: int, slots: int, bench_seed: int) -> Result:
    s = SEARCHERS[searcher] if isinstance(searcher, str) else searcher
    return Night(landscape, s, budget, slots, bench_seed).run()
