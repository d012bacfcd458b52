"""The engine: a steady-state population evolved with annealing acceptance over parallel slots.

One thread (the caller's) owns every decision and every archive write; evaluations run in one
worker thread per slot (slots.py) and proposals each in a daemon thread (proposals.py), so slots
never wait on the operator when work is possible. The loop, as `execute` reads:

    recover  ->  what a crash left (orphaned processes, RUNNING rows, unqueued evaluations, undecided candidates)
    seed     ->  evaluated `replicates` times: σ̂ measured (with a previous run's σ as a prior), the seed enters
    loop     ->  propose: draw parents (the followed member, the elite, tournament), the operator proposes a
                 child, dedupe by code hash
             ->  evaluate in a free slot -> a would-be new best is re-evaluated once (--confirm)
             ->  decide: Metropolis against its competitor at T(progress), T0 = 2σ̂ pooled over every
                 replicate so far -> population updated, follow-through updated
             until the budget (hours, candidates, cost) is spent or a stop is asked for
    re-measure -> the top members by mean once more each; the best of them by mean, the run's chosen
                 best, REMEASURE_REPORTING times more: the value reported for it

A seed that fails (it cannot run here) ends the run as FAILED: nothing can be evolved from it.

Every step is recorded in the archive before the next one depends on it, so `--resume` after a
crash or Ctrl-C continues exactly: population, temperature position, RNG and counters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, Callable

from evo.config import RunConfig
from evo.core import acceptance, decision, noise, selection
from evo.core import format as fmt
from evo.engine.early import EarlyStopping
from evo.engine.proposals import Asked, Proposals
from evo.engine.seeding import SeedPlan
from evo.engine.slots import Pending, SlotPool
from evo.launch.apparatus import Apparatus
from evo.launch.runner import (COMPILE_CACHE, EvalResult, Limits, Slot, file_hash, kill_orphan, run_evaluation, startup_limit,
                               training_limit)
from evo.operators import Operator, OperatorUnavailable, Parent, Proposal
from evo.storage import (CHOOSING_REPLICATE, COMPLETE, FAIL, FAILED, FINISHED, INTERRUPTED, PRUNED, REPORTING_REPLICATE,
                         RUNNING, WAITING, Archive, ArchiveError, Candidate, Run, owner_id)

HEARTBEAT_SECONDS = 10.0
MAX_OPERATOR_FAILURES = 20   # consecutive proposals that failed to produce code: stop proposing
EVAL_SEED_BASE = 42          # replicate r of every candidate trains with seed 42 + r (common random numbers)
PAUSE_FIRST, PAUSE_MAX = 30.0, 600.0  # seconds proposals pause while the operator is unavailable
# Failures the same code on the same machine repeats: a seed failing so is not evaluated again.
DETERMINISTIC_FAILURES = frozenset({"crash", "invalid", "oom"})
# Failures that say more about this machine's load, the limits or evo itself than about the code: a
# seed that failed only so is measured again on --resume (with new allowances), not given up.
MACHINE_FAILURES = frozenset({"timeout", "over_budget", "harness"})


class EngineError(Exception):
    """The run cannot go on (the seed failed, the apparatus changed): one sentence."""


class Engine:
    def __init__(self, archive: Archive, run: Run, config: RunConfig, operator: Operator, slots: list[Slot],
                 apparatus: Apparatus, seed: SeedPlan, evaluate: Callable[..., EvalResult] = run_evaluation,
                 clock: Callable[[], float] = time.monotonic):
        self.archive, self.run, self.config, self.operator = archive, run, config, operator
        # Seconds for the budget (--hours), active time, heartbeats and pauses: a simulated night
        # (tests, benchmarks) passes its own clock along with a simulated evaluation.
        self.clock = clock
        self.slots, self.apparatus = slots, apparatus
        self.seed = seed
        startup, evaluation = config.allowances(apparatus.allowances)
        self.limits = Limits(apparatus.time_budget, startup, evaluation, run_name=config.name)
        self.rng = random.Random(config.seed)
        if run.rng_state:
            self.rng.setstate(_rng_from_json(run.rng_state))
        self.stop_proposing = threading.Event()  # first Ctrl-C
        self.kill = threading.Event()            # second Ctrl-C: running evaluations die now
        self._active_base, self._slot_base = run.active_seconds, run.slot_seconds
        self._t_start = clock()
        self._operator_failures = 0
        self.user_stopped = False
        self.proposals = Proposals(archive, run.id, operator, clock)
        # `evaluate`: benchmarks and tests swap in a simulated evaluation with run_evaluation's signature
        self.pool = SlotPool(slots, evaluate, apparatus, self.limits, self.kill, clock)
        self.early = EarlyStopping(archive, run.id, apparatus.time_budget, config.early_stop)
        self.status = self.pool.status            # slot name -> (what it is doing, since when), for the live view
        self._seed_startups: list[float] = []     # harness-clock start-ups of the seed's evaluations
        self._limit_training()                    # a resumed run's seed is measured already
        self._paused_until = 0.0
        self._pause_began = float("-inf")         # when the current (or last) pause began
        self._seed_id: int | None = None
        self._pause = PAUSE_FIRST
        self._cost_capped = False
        self.prior_sigma, self.prior_run = self._prior_sigma()
        self._seed_undecided = True  # until the archive says otherwise (`_seed_pending`)
        self._sigma: tuple[int, float | None] | None = None  # (COMPLETE evaluations, σ̂ from them)
        self._fed: set[int] = set()  # candidates whose outcome the model bandit has been told
        self.follow = self._replay_follow()
        self._reserve: float | None = None         # seconds --hours keeps for the re-measure, once known
        self.search = config.resolve_search(len(slots), apparatus.time_budget + startup + evaluation)
        stored = json.loads(run.config)
        if (stored.get("population"), stored.get("auto_sigmas")) != (config.population, config.auto_sigmas):
            # resolved from the budget: stored, so --resume and `evo status` use the same search
            archive.update_run(run.id, self.search, config=json.dumps(config.to_dict(), sort_keys=True))
        elif run.seed_id is None:  # a new run says once in its log what the search will do
            archive.update_run(run.id, self.search)

    # ----- the loop -----------------------------------------------------------------------------

    def execute(self) -> str:
        """Run until the budget is spent or a stop is asked for. Returns the run's final status."""
        archive, run_id, pool, proposing = self.archive, self.run.id, self.pool, self.proposals.in_flight
        self._recover()
        self._ensure_seed()
        last_beat = float("-inf")  # the first iteration beats, whatever the clock reads
        try:
            while True:
                if self.clock() - last_beat > HEARTBEAT_SECONDS:
                    # Raises OwnershipLost if another process took the run over: the loop ends
                    # at once, its evaluations are killed, and the archive's fence refuses
                    # to record them (the new owner runs them again).
                    archive.heartbeat(run_id, owner_id(), **self.time_spent())
                    last_beat = self.clock()
                self._dispatch()
                self._propose()
                # After a stop, proposals still in flight are abandoned: an LLM call with the SDK's
                # timeout and retries can take many minutes, and would only queue unevaluated work.
                if not pool.running and (self.stop_proposing.is_set() or (not proposing and not self._work_possible())):
                    if not self.stop_proposing.is_set() and self._remeasure():
                        continue
                    break
                done, _ = wait([*pool.running, *proposing], timeout=0.5, return_when=FIRST_COMPLETED)
                finished = pool.collect(done)
                if finished and not any(self._is_seed_id(p.candidate_id) for p, _ in finished):
                    # Freed slots take queued work before the bookkeeping; not while the seed is
                    # measured: a seed that fails for good must not start its next replicate.
                    self._dispatch()
                for pending, fut in finished:
                    self._finish(pending, fut)
                for fut in done:
                    if fut in proposing:
                        self._admit(proposing.pop(fut), fut)
        except BaseException:
            self.kill.set()  # nothing may outlive a failed loop; interrupted evaluations re-queue on resume
            raise
        finally:
            self.stop_proposing.set()
            pool.shutdown()
            self._settle_all()
        self.temperature0()  # σ̂ and T0 as the last evaluations (the re-measures) leave them, for status and report
        status = INTERRUPTED if self.user_stopped else FINISHED
        archive.update_run(run_id, f"run {status.lower()}", status=status, **self.time_spent(),
                           owner=None)
        return status

    def request_stop(self) -> None:
        """First Ctrl-C: no new proposals or evaluations; running evaluations finish."""
        self.user_stopped = True
        self.stop_proposing.set()

    def request_kill(self) -> None:
        """Second Ctrl-C: running evaluations are killed and recorded as FAIL(interrupted)."""
        self.request_stop()
        self.kill.set()

    # ----- recovery and the seed ----------------------------------------------------------------

    def _recover(self) -> None:
        """Take the run over from where a crash (or a stop) left it, before anything new starts."""
        archive, run_id = self.archive, self.run.id
        for ev in archive.evaluations(run_id):
            if ev.state == RUNNING and ev.workdir and kill_orphan(Path(ev.workdir)):
                archive.update_run(run_id, f"killed the orphaned process of evaluation {ev.id} left by a crash")
        archive.recover(run_id)
        self._queue_lost_evaluations()
        self._replay_outcomes()
        seed_id = archive.run_by_id(run_id).seed_id
        if seed_id is not None and (seed := archive.candidate_by_id(seed_id)).state == FAIL:
            if seed.accepted is None:  # it failed for reasons of this machine: measure it again
                archive.retry_failed(seed.id)
            else:
                self._seed_failed(seed)  # it failed for good: nothing to evolve
        for cand in archive.undecided(run_id):
            self._decide(cand)

    def _ensure_seed(self) -> None:
        if self.archive.run_by_id(self.run.id).seed_id is not None:
            return
        index: dict[str, int] = {}  # import key -> its position in the history
        history: list[dict[str, Any]] = []
        for item in self.seed.history:
            history.append(dict(code=item.code, operator="import", parent=index.get(item.parent_key),
                                hypothesis=item.hypothesis, state=FAIL if item.status == "crash" else COMPLETE,
                                fail_reason="crash" if item.status == "crash" else None,
                                accepted=item.status == "keep", imported_val_bpb=item.val_bpb))
            index[item.key] = len(history) - 1
        seed = dict(code=self.seed.code, operator=self.seed.operator, parent=index.get(self.seed.parent_key),
                    hypothesis=self.seed.hypothesis, imported_val_bpb=self.seed.imported_val_bpb,
                    rng_state=_rng_to_json(self.rng))
        self.archive.add_seed(self.run.id, history, seed, self._replicate_seeds(0, self.config.replicates))

    def _queue_lost_evaluations(self) -> None:
        """Archives written before a candidate and its evaluations were one transaction can hold an
        undecided candidate with fewer evaluations than it was given (none for a child, some of the
        seed's replicates): queue the rest, or it would never be evaluated."""
        seed_id = self.archive.run_by_id(self.run.id).seed_id
        queued: dict[int, int] = {}
        for ev in self.archive.evaluations(self.run.id):
            queued[ev.candidate_id] = queued.get(ev.candidate_id, 0) + 1
        for cand in self.archive.candidates(self.run.id):
            wanted = self.config.replicates if cand.id == seed_id else 1
            have = queued.get(cand.id, 0)
            if cand.accepted is None and cand.state in (WAITING, COMPLETE) and have < wanted:
                for replicate, seed in enumerate(self._replicate_seeds(have, wanted), start=have):
                    self.archive.queue_evaluation(self.run.id, cand.id, replicate, seed)
                self.archive.update_run(self.run.id, f"candidate {cand.number}: queued the evaluation(s) a crash "
                                        "left unqueued")

    @staticmethod
    def _replicate_seeds(first: int, stop: int) -> list[int]:
        return [EVAL_SEED_BASE + r for r in range(first, stop)]

    def _seed_failed(self, seed: Candidate) -> None:
        """The run cannot go on without its seed: record a terminal FAILED status and say how to start again."""
        self.stop_proposing.set()
        self.archive.update_run(self.run.id, f"the seed failed ({seed.fail_reason}); the run cannot go on",
                                status=FAILED, **self.time_spent())
        raise EngineError(f"the seed failed ({seed.fail_reason}: {seed.fail_detail}), so run {self.run.name!r} cannot "
                          f"go on; see `evo show {seed.number} --name {self.run.name}`, then start a new run with a "
                          "seed that runs on this machine (--seed-train FILE).")

    def _seed_may_retry(self, seed: Candidate) -> bool:
        reasons = {e.fail_reason for e in self.archive.evaluations(self.run.id, seed.id) if e.state == FAIL}
        return bool(reasons) and reasons <= MACHINE_FAILURES

    def _seed_interrupted(self, seed: Candidate) -> None:
        """The seed failed for reasons of this machine (a timeout on a loaded box, an allowance too
        short): left undecided, so `--resume` (with new allowances) measures it again."""
        self.stop_proposing.set()
        self.archive.update_run(self.run.id, f"the seed failed here ({seed.fail_reason}); the run stops until --resume",
                                status=INTERRUPTED, **self.time_spent())
        raise EngineError(f"the seed's evaluation failed ({seed.fail_reason}: {seed.fail_detail}); once that is "
                          f"fixed, `evo run --resume --name {self.run.name}` measures the seed again.")

    def _is_seed(self, cand: Candidate) -> bool:
        return self._is_seed_id(cand.id)

    def _is_seed_id(self, candidate_id: int) -> bool:
        return candidate_id == self._seed_candidate_id()

    def _seed_candidate_id(self) -> int | None:
        if self._seed_id is None:  # set once, when the seed is archived
            self._seed_id = self.archive.run_by_id(self.run.id).seed_id
        return self._seed_id

    # ----- propose ----------------------------------------------------------------------------

    def _propose(self) -> None:
        # Keep a proposal ready for every slot (plus lookahead): slots that free up while the
        # operator is still thinking would otherwise idle for a whole proposal latency.
        # (The seed's own replicates do not count: its children's first wave is asked for at the start.)
        queued = sum(not self._is_seed_id(e.candidate_id) for e in self.archive.waiting_evaluations(self.run.id)) \
            if not self.stop_proposing.is_set() else 0
        wanted = len(self.slots) + self.config.lookahead - queued
        while len(self.proposals.in_flight) < wanted and self._may_propose():
            # the elite as parent only where there is a choice and annealing: greedy stays greedy
            elite = selection.ELITE_SHARE if (self.config.population or 1) > 1 and self.temperature() > 0 else 0.0
            sigma = self.sigma()
            heat = self.temperature() / sigma if sigma else None
            self.proposals.ask(self._parents, self.rng, elite_share=elite, follow=self.follow.member, heat=heat)

    def _may_propose(self) -> bool:
        if self.stop_proposing.is_set() or not self.budget_left():
            return False
        if self._operator_failures >= MAX_OPERATOR_FAILURES or self.clock() < self._paused_until:
            return False
        if self.config.max_cost is not None and self.archive.cost(self.run.id) >= self.config.max_cost:
            if not self._cost_capped:
                self._cost_capped = True
                self.archive.update_run(self.run.id, f"LLM spend reached --max-cost ${self.config.max_cost:.2f}: "
                                        "no more proposals; running evaluations finish")
            return False
        return bool(self._parents())

    def _parents(self) -> list[selection.Member]:
        """Whom children descend from: the population, or while the seed's other replicates run the
        seed alone, once one of them completed (it runs here: no LLM spend on a seed that cannot),
        so the first wave's proposals are ready when the seed is decided; they train only then
        (`_seed_pending` holds them back)."""
        members = self.members()
        if members or not self._seed_pending():
            return members
        seed = self.archive.candidate_by_id(self._seed_id)
        return [selection.Member(seed.id, seed.val_bpb)] if seed.val_bpb is not None else []

    def _seed_pending(self) -> bool:
        """The seed is archived and not yet decided (its replicates run or wait)."""
        if not self._seed_undecided or self._seed_candidate_id() is None:
            return False
        self._seed_undecided = self.archive.candidate_by_id(self._seed_id).accepted is None
        return self._seed_undecided

    def _work_possible(self) -> bool:
        # While proposals are paused for an unavailable operator the run waits, it does not end.
        paused = self.clock() < self._paused_until and self.budget_left() and not self.stop_proposing.is_set()
        return paused or bool(self.archive.waiting_evaluations(self.run.id)) or self._may_propose()

    def _as_parent(self, c: Candidate) -> Parent:
        return self.proposals.as_parent(c)

    def _admit(self, asked: Asked, fut: Future) -> None:
        """Store what the operator proposed: a new candidate queued for evaluation, a duplicate
        pruned at no slot cost, or a failure to propose archived as FAIL(invalid). An unavailable
        operator archives nothing and pauses proposals."""
        rng_state = _rng_to_json(self.rng)
        try:
            proposal: Proposal = fut.result()
        except OperatorUnavailable as e:
            self._pause_proposals(e, asked.submitted)
            return
        except ArchiveError:  # the database failed or the run was taken over: the run stops
            raise
        except Exception as e:  # noqa: BLE001 - an operator error, or any bug on its way (a prompt, a
            # locked database, git in a merge): one proposal is lost, not the night
            self._operator_failures += 1
            self._resume_proposals()
            self._feed_bandit(self.proposals.store_failure(asked, e, rng_state))
            return
        self._operator_failures = 0
        self._resume_proposals()
        stored = self.proposals.store(asked, proposal, rng_state, self._replicate_seeds(0, 1))
        if stored.state == PRUNED:  # a duplicate: LLM spend for nothing
            self._feed_bandit(stored)

    def _pause_proposals(self, error: OperatorUnavailable, submitted: float) -> None:
        """Pause proposals, doubling the pause once per outage: proposals asked before the current
        pause began failed in the outage it already answers (8 slots must not mean 8 doublings)."""
        if error.llm_calls:
            self.archive.record_llm_calls(self.run.id, error.llm_calls)
        if submitted < self._pause_began:
            return
        self._pause_began = self.clock()
        self._paused_until = self._pause_began + self._pause
        self.archive.update_run(self.run.id, f"operator unavailable ({error}); pausing proposals for "
                                f"{self._pause:.0f}s, evaluations go on")
        self._pause = min(PAUSE_MAX, self._pause * 2)

    def _resume_proposals(self) -> None:
        if self._pause > PAUSE_FIRST:
            self.archive.update_run(self.run.id, "operator available again: proposals resumed")
            self._pause = PAUSE_FIRST

    # ----- evaluate -----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start queued evaluations in the free slots, oldest first."""
        if self.stop_proposing.is_set():
            return  # after Ctrl-C only what already runs may finish
        in_flight = self.pool.evaluation_ids()
        waiting = [e for e in self.archive.waiting_evaluations(self.run.id) if e.id not in in_flight]
        if self._seed_pending():  # children wait for the seed's verdict: T0, σ̂ and the training limit
            waiting = [e for e in waiting if self._is_seed_id(e.candidate_id)]
        for slot, ev in zip(self.pool.free(), waiting):
            cand = self.archive.candidate_by_id(ev.candidate_id)
            workdir = (self.archive.files / "runs" / self.run.name / f"c{cand.number:05d}" / f"r{ev.replicate}").resolve()
            self.archive.start_evaluation(ev.id, slot.name, str(workdir), _load_average(), os.cpu_count())
            self.pool.start(slot, ev.id, cand.id, self.archive.code(cand.code_hash), workdir, ev.seed,
                            f"candidate {cand.number} r{ev.replicate}", self.early.rule(cand, self._is_seed(cand)),
                            self._compile_cache_for(cand))

    def _compile_cache_for(self, cand: Candidate) -> Path | None:
        """The compile cache an evaluation of `cand` starts from: a finished evaluation's of the
        same code (a replicate, a confirmation), else of its first parent's. Only its own line of
        descent: what one candidate's code wrote there reaches its descendants, never a rival."""
        for candidate_id in (cand.id, cand.parent_id):
            if candidate_id is None:
                continue
            for ev in self.archive.evaluations(self.run.id, candidate_id):
                if ev.state == COMPLETE and ev.workdir and (Path(ev.workdir) / COMPILE_CACHE).is_dir():
                    return Path(ev.workdir) / COMPILE_CACHE
        return None

    def _finish(self, pending: Pending, fut: Future) -> None:
        fail_reason = self._settle(pending, fut)
        if fail_reason == "interrupted":
            return  # queued again on resume; nothing to decide yet
        cand = self.archive.candidate_by_id(pending.candidate_id)
        if fail_reason in DETERMINISTIC_FAILURES and cand.n_evals == 0 and self._is_seed(cand):
            # The same code on the same machine fails the same way: replicating it only wastes slots.
            self.archive.cancel_waiting(cand.id, f"the seed failed ({fail_reason}); it would fail again")
            cand = self.archive.candidate_by_id(cand.id)
        members = {c.id for c in self.archive.population(self.run.id)}
        if cand.state in (COMPLETE, FAIL, PRUNED) and cand.accepted is None:
            self._decide(cand)
        left = members - {c.id for c in self.archive.population(self.run.id)}
        for candidate_id in {cand.id, *left}:
            self._prune_compile_caches(candidate_id)

    def _prune_compile_caches(self, candidate_id: int) -> None:
        """Keep one compile cache per candidate that may still be a parent or be measured again
        (undecided, or in the population), none of the rest: a night's evaluation folders would
        otherwise each hold a copy (tens to hundreds of MB on a GPU)."""
        cand = self.archive.candidate_by_id(candidate_id)
        keep = cand.in_population or cand.accepted is None
        for ev in self.archive.evaluations(self.run.id, candidate_id):
            cache = Path(ev.workdir) / COMPILE_CACHE if ev.workdir else None
            if cache is None or ev.state in (RUNNING, WAITING) or not cache.is_dir():
                continue
            if keep and ev.state == COMPLETE:
                keep = False   # the first finished one stays
                continue
            shutil.rmtree(cache, ignore_errors=True)

    def _settle(self, pending: Pending, fut: Future) -> str | None:
        """Record how an evaluation ended, whatever went wrong on the way (the runner, the log
        parser, the archive write): an evaluation is never left RUNNING for every resume to die on.
        Returns its fail reason (None when COMPLETE). Only a changed locked apparatus stops the run."""
        try:
            result: EvalResult = fut.result()
            self._record(pending, result)
            return result.outcome.fail_reason
        except ArchiveError:  # the database failed (a full disk) or the run was taken over: stop, judge nothing
            raise
        except Exception as e:  # noqa: BLE001 - recorded as the evaluation's failure
            changed = self._apparatus_changed()
            reason, detail = ("invalid", f"{self.apparatus.prepare_path} changed since the run started; the apparatus "
                              "is locked") if changed else \
                ("harness", f"evo failed while finishing this evaluation ({type(e).__name__}: {e}); it counts as "
                 "failed so the run goes on")
            self.archive.finish_evaluation(pending.evaluation_id, state=FAIL, fail_reason=reason, detail=detail,
                                           metrics=None, curve=[], returncode=None,
                                           wall_seconds=self.clock() - pending.started, harness_seconds=0.0,
                                           log_tail="")
            if changed:
                self.stop_proposing.set()
                raise EngineError(f"{detail}; restore it, then --resume.") from None
            return reason

    def _settle_all(self) -> None:
        """At shutdown: record every evaluation that ended, even when one of them cannot be (the
        apparatus changed, the run was taken over), then raise the first such error."""
        errors: list[Exception] = []
        for fut, pending in self.pool.running.items():
            if fut.done():
                try:
                    self._settle(pending, fut)
                except (ArchiveError, EngineError) as e:
                    errors.append(e)
        if errors:
            raise errors[0]

    def _apparatus_changed(self) -> bool:
        path = self.apparatus.prepare_path
        return not path.is_file() or file_hash(path) != self.apparatus.locked_hash

    def _record(self, pending: Pending, result: EvalResult) -> None:
        o = result.outcome
        if result.startup_seconds is not None and o.state == COMPLETE and self._is_seed_id(pending.candidate_id):
            self._seed_startups.append(result.startup_seconds)
        self.archive.finish_evaluation(pending.evaluation_id, state=o.state, fail_reason=o.fail_reason, detail=o.detail,
                                       metrics=o.summary, curve=result.curve, returncode=result.returncode,
                                       wall_seconds=result.wall_seconds, harness_seconds=result.harness_seconds,
                                       log_tail=result.log_tail, startup_seconds=result.startup_seconds,
                                       trained_seconds=result.trained_seconds)
        if o.state == COMPLETE:
            self._warn_of_noise(pending)

    def _warn_of_noise(self, pending: Pending) -> None:
        """Say in the log when the evaluation just recorded measured the machine: it started under
        load above the core count, or it made the candidate's replicates differ in speed."""
        evaluations = self.archive.evaluations(self.run.id, pending.candidate_id)
        this = next(e for e in evaluations if e.id == pending.evaluation_id)
        others = [e for e in evaluations if e.id != pending.evaluation_id]
        said = [noise.load_warning(this, os.cpu_count() or 1)]
        if noise.speed_warning(others) is None:
            said.append(noise.speed_warning(evaluations))
        number = self.archive.candidate_by_id(pending.candidate_id).number
        for warning in filter(None, said):
            self.archive.update_run(self.run.id, f"noise: candidate {number}: {warning}")

    def _limit_training(self, seed_id: int | None = None) -> None:
        """Hold every later training process to the budget plus what the seed's needed around it."""
        seed_id = seed_id if seed_id is not None else self.run.seed_id
        if seed_id is None:
            return
        processes = [e.wall_seconds - e.harness_seconds for e in self.archive.evaluations(self.run.id, seed_id)
                     if e.state == COMPLETE and e.wall_seconds is not None and e.harness_seconds is not None]
        limit = training_limit(self.apparatus.time_budget, processes)
        # Start-ups seen by this process only: a resumed run keeps the configured start-up allowance.
        startup = startup_limit(self.limits.startup_allowance, self.apparatus.time_budget, self._seed_startups)
        self.pool.limits = dataclasses.replace(self.limits, training_limit=limit, startup_allowance=startup)

    # ----- decide ---------------------------------------------------------------------------

    def _decide(self, cand: Candidate) -> None:
        run_id = self.run.id
        if cand.state in (FAIL, PRUNED):  # PRUNED: stopped early (never the seed; no repair, not a crash)
            if self._is_seed(cand) and self._seed_may_retry(cand):
                self._seed_interrupted(cand)
            reason = f"stopped early: {cand.fail_detail}" if cand.state == PRUNED else f"failed ({cand.fail_reason})"
            self.archive.decide(cand.id, accepted=False, temperature=None, probability=0.0, delta=None,
                                competitor_id=None, leaving=[], reason=reason)
            self._followed(cand.parent_id, cand.id, False, None)
            self._feed_bandit(cand)
            if self._is_seed(cand):
                self._seed_failed(cand)
            if self.proposals.wants_fix(cand, self._is_seed(cand)):
                self.proposals.fix_queue.append(cand.id)
            return
        if self._is_seed(cand):
            values = [e.val_bpb for e in self.archive.evaluations(run_id, cand.id) if e.state == COMPLETE]
            sigma = self.sigma()
            try:
                t0 = acceptance.initial_temperature(self.config.temperature, sigma, self.config.auto_sigmas)
            except ValueError:  # replicates all failed but one: fall back to greedy, say so
                t0 = 0.0
            if acceptance.ignores_seed(values):
                message = (f"the seed's {len(values)} replicates scored exactly the same val_bpb: it ignores "
                           f"EVO_SEED, so noise cannot be measured; make its initialisation follow EVO_SEED "
                           f"(seed_train.py does)")
                if self.config.temperature == "auto":
                    raise EngineError(message + ", or start a run with an explicit --temperature.")
                self.archive.update_run(run_id, message)
            prior = f" and prior σ {self.prior_sigma:.6f} from run {self.prior_run}" if self.prior_run else ""
            self.archive.update_run(run_id, f"noise σ = {sigma if sigma is not None else float('nan'):.6f} from "
                                    f"{len(values)} replicates{prior}; T0 = {t0:.6f}", sigma=sigma, temperature0=t0)
            self._limit_training(cand.id)
            self.archive.decide(cand.id, accepted=True, temperature=t0, probability=1.0, delta=None,
                                competitor_id=None, leaving=[], reason=f"seed, val_bpb {cand.val_bpb:.6f}")
            return
        members = self.members()
        if not members:  # cannot happen once the seed is in; guard against a corrupted archive
            raise EngineError("the population is empty; the archive may be damaged.")
        evaluations = self.archive.evaluations(run_id, cand.id)
        child = decision.Child(cand.id, cand.number, cand.val_bpb, cand.parent_id, len(evaluations),
                               tuple((e.fail_reason, e.detail) for e in evaluations if e.state == FAIL))
        numbers = {c.id: c.number for c in self.archive.population(run_id)}
        verdict = decision.decide(child, members, selection.best(members), self.temperature(), self.rng.random,
                                  confirm=self.config.confirm, population=self.config.population, numbers=numbers)
        if isinstance(verdict, decision.Confirm):
            n = verdict.replicate
            self.archive.queue_evaluation(run_id, cand.id, n, EVAL_SEED_BASE + n)
            self.archive.update_run(run_id, verdict.message)
            return
        accepted = isinstance(verdict, decision.Accept)
        leaving = list(verdict.leaving) if isinstance(verdict, decision.Accept) else []
        judged = verdict.competitor_id is not None  # the Metropolis rule drew from the run's RNG
        self.archive.decide(cand.id, accepted=accepted, temperature=verdict.temperature,
                            probability=verdict.probability, delta=verdict.delta, competitor_id=verdict.competitor_id,
                            leaving=leaving, reason=verdict.reason, rng_state=_rng_to_json(self.rng) if judged else None)
        self._followed(cand.parent_id, cand.id, accepted, verdict.delta)
        if judged:
            self._feed_bandit(self.archive.candidate_by_id(cand.id))

    # ----- the model bandit ----------------------------------------------------------------------

    def _feed_bandit(self, cand: Candidate, spent: float | None = None) -> None:
        """Tell the operator what a proposal earned its model, once per candidate: live as each
        outcome is known, and on resume for everything the archive already holds."""
        if not cand.model or cand.id in self._fed:
            return
        competitor = self.archive.candidate_by_id(cand.competitor_id) if cand.competitor_id else None
        won = acceptance.proposal_reward(cand.state, cand.fail_reason, cand.accept_delta, cand.n_evals,
                            competitor.n_evals if competitor else 1, self.sigma())
        if won is None:
            return
        self._fed.add(cand.id)
        if spent is None:
            spent = self.archive.cost(self.run.id, cand.id)
        self.operator.record_outcome(cand.model, won, spent)

    def _replay_outcomes(self) -> None:
        """A resumed run's bandit goes on from the outcomes already archived, in their order."""
        spent = self.archive.cost_by_candidate(self.run.id)
        for cand in self.archive.candidates(self.run.id):
            if cand.model and (cand.accepted is not None or cand.state in (FAIL, PRUNED)):
                self._feed_bandit(cand, spent.get(cand.id, 0.0))

    # ----- budget and temperature --------------------------------------------------------------

    @property
    def active_seconds(self) -> float:
        return self._active_base + self.clock() - self._t_start

    def time_spent(self) -> dict[str, float]:
        """The run's wall time and its slots' time (the busy figure's denominator), over all sessions."""
        session = self.clock() - self._t_start
        return {"active_seconds": self._active_base + session, "slot_seconds": self._slot_base + len(self.slots) * session}

    def _seed_number(self) -> int | None:
        run = self.archive.run_by_id(self.run.id)
        return self.archive.candidate_by_id(run.seed_id).number if run.seed_id else None

    def children_made(self) -> int:
        return self.archive.count_children(self.run.id)

    def progress(self) -> float:
        """Position on the cooling schedule: time spent, or children judged, against the budget."""
        seed = self._seed_number()
        judged = 0 if seed is None else self.archive.count_candidates(self.run.id, after_number=seed, judged_only=True,
                                                                      exclude_imports=True)
        return acceptance.progress(self.active_seconds, self.config.hours, judged, self.config.max_candidates)

    def temperature(self) -> float:
        return acceptance.temperature_at(self.temperature0(), self.progress(), self.config.cooling)

    def temperature0(self) -> float:
        """T0: the number given, or with `auto` config.auto_sigmas × σ̂ as it stands now (stored with the
        run when σ̂ moves, so `evo status` and the report show the one in use)."""
        run = self.archive.run_by_id(self.run.id)
        if self.config.temperature != "auto" or run.temperature0 is None:  # None: the seed is not in yet
            return run.temperature0 or 0.0
        sigma = self.sigma()
        if sigma is None:
            return run.temperature0
        t0 = acceptance.initial_temperature("auto", sigma, self.config.auto_sigmas)
        if sigma != run.sigma:
            self.archive.update_run(self.run.id, sigma=sigma, temperature0=t0)
        return t0

    def sigma(self) -> float | None:
        """σ̂: the spread within every candidate measured more than once (the seed's replicates,
        confirmations, re-measures) pooled with the prior; computed again only when an evaluation
        completed since."""
        count = self.archive.count_evaluations(self.run.id)
        if self._sigma is None or self._sigma[0] != count:
            groups = list(self.archive.replicated_values(self.run.id).values())
            self._sigma = (count, acceptance.pooled_sigma(groups, self.prior_sigma))
        return self._sigma[1]

    def _prior_sigma(self) -> tuple[float | None, str | None]:
        """The σ of the latest earlier run in this archive on the same preset, and its name."""
        for r in reversed(self.archive.runs()):
            if r.id < self.run.id and r.sigma is not None and json.loads(r.config).get("preset") == self.config.preset:
                return r.sigma, r.name
        return None, None

    def budget_left(self) -> bool:
        made = self.children_made() + len(self.proposals.in_flight)  # proposals in flight will become candidates
        if self.config.max_candidates is not None and made >= self.config.max_candidates:
            return False
        return not (self.config.hours is not None
                    and self.active_seconds >= self.config.hours * 3600 - self._remeasure_reserve())

    # ----- follow-through and the final re-measure ------------------------------------------------

    def _followed(self, parent_id: int | None, child_id: int, accepted: bool, delta: float | None) -> None:
        self.follow = selection.follow_through(self.follow, parent_id=parent_id, child_id=child_id,
                                               accepted=accepted, worse=delta is not None and delta > 0)

    def _replay_follow(self) -> selection.FollowThrough:
        """The follow-through state a resumed run continues from: the archive's decisions replayed
        in the order they were made (the state is a pure function of them)."""
        state = selection.FollowThrough()
        parent_of = {c.id: c.parent_id for c in self.archive.outcomes(self.run.id)}
        for ev in self.archive.events(self.run.id, kind="decide"):
            parent_id = parent_of.get(ev.candidate_id)
            if parent_id is None:
                continue
            data = json.loads(ev.data or "{}")
            delta = data.get("delta")
            state = selection.follow_through(state, parent_id=parent_id, child_id=ev.candidate_id,
                                             accepted=bool(data.get("accepted")), worse=delta is not None and delta > 0)
        return state

    def _remeasures(self) -> bool:
        """Greedy settings (one replicate, no confirmation) measure nothing twice, so stay greedy."""
        return self.config.replicates > 1 or self.config.confirm

    def _remeasure_reserve(self) -> float:
        """Seconds a time budget keeps for the final re-measure, so that it runs inside --hours: its
        two stages' waves over the slots, each evaluation as long as the seed's took (at most half
        the budget; none before the seed is measured)."""
        if not self._remeasures() or self.config.hours is None:
            return 0.0
        if self._reserve is None:
            seed_id = self.archive.run_by_id(self.run.id).seed_id
            walls = [e.wall_seconds for e in self.archive.evaluations(self.run.id, seed_id)
                     if e.state == COMPLETE and e.wall_seconds] if seed_id is not None else []
            if not walls:
                return 0.0
            slots = len(self.slots)
            waves = -(-selection.REMEASURE_TOP // slots) + -(-selection.REMEASURE_REPORTING // slots)
            self._reserve = min(waves * sum(walls) / len(walls), self.config.hours * 3600 / 2)
        return self._reserve

    def _remeasure_stage(self) -> int:
        """How many stages of the final re-measure the run has queued since its last child, from its
        newest evaluation (the archive alone says it: a resumed run goes on where it was, and one
        resumed with more budget re-measures again at its new end)."""
        newest = self.archive.newest_evaluation(self.run.id)
        if newest is None or newest.replicate < CHOOSING_REPLICATE:
            return 0
        return 2 if newest.replicate >= REPORTING_REPLICATE else 1

    def _next_replicate(self, candidate_id: int, first: int, stop: int | None = None) -> int:
        """The candidate's next free replicate number in [first, stop): a re-measure at a later end
        of the same run (resumed with more budget) must not reuse one."""
        taken = [e.replicate for e in self.archive.evaluations(self.run.id, candidate_id)
                 if e.replicate >= first and (stop is None or e.replicate < stop)]
        return max(taken, default=first - 1) + 1

    def _remeasure(self) -> bool:
        """Once the budget is spent, the final re-measure (selection.REMEASURE_TOP): first the top
        members by mean once more each, then the best of them by mean, measured in reporting
        evaluations (replicates from REPORTING_REPLICATE). Returns whether anything was queued."""
        if not self._remeasures() or self.budget_left():
            return False
        stage = self._remeasure_stage()
        if stage >= 2:
            return False
        top = selection.finalists(self.members())
        numbers = {c.id: c.number for c in self.archive.population(self.run.id)}
        if stage == 0:
            for m in top:
                replicate = self._next_replicate(m.id, CHOOSING_REPLICATE, REPORTING_REPLICATE)
                self.archive.queue_evaluation(self.run.id, m.id, replicate, EVAL_SEED_BASE + replicate)
            self.archive.update_run(self.run.id, f"the budget is spent: measuring the top {len(top)} member(s) once "
                                    "more to choose the best: candidate(s) " + ", ".join(str(numbers[m.id]) for m in top))
            return True
        chosen = selection.best(top)
        first = self._next_replicate(chosen.id, REPORTING_REPLICATE)
        for replicate in range(first, first + selection.REMEASURE_REPORTING):
            self.archive.queue_evaluation(self.run.id, chosen.id, replicate, EVAL_SEED_BASE + replicate)
        self.archive.update_run(self.run.id, f"candidate {numbers[chosen.id]} is the best by its mean "
                                f"({fmt.bpb(chosen.score)}); measuring it {selection.REMEASURE_REPORTING} times more "
                                "for the value reported, which no choice looked at")
        return True

    # ----- population ------------------------------------------------------------------------------

    def members(self) -> list[selection.Member]:
        return [selection.Member(c.id, c.val_bpb) for c in self.archive.population(self.run.id) if c.val_bpb is not None]


def _load_average() -> float | None:
    """The machine's 1-minute load average (what an evaluation starts under), None where unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _rng_to_json(rng: random.Random) -> str:
    version, state, gauss = rng.getstate()
    return json.dumps([version, list(state), gauss])


def _rng_from_json(text: str) -> tuple:
    version, state, gauss = json.loads(text)
    return version, tuple(state), gauss
