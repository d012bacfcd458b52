"""The engine: a steady-state population evolved with annealing acceptance over parallel slots.

One thread (the caller's) owns every decision and every archive write; evaluations run in one
worker thread per slot (each waiting on its subprocess) and proposals in a small pool, so slots
never wait on the operator when work is possible. The loop:

    seed  ->  evaluated `replicates` times: σ measured, T0 resolved, the seed enters the population
    loop  ->  draw parents (tournament) -> operator proposes a child -> dedupe by code hash
          ->  evaluate in a free slot -> a would-be new best is re-evaluated once (--confirm)
          ->  Metropolis decision against its competitor at T(progress) -> population updated

A seed that fails (it cannot run here) ends the run as FAILED: nothing can be evolved from it.

Every step is recorded in the archive before the next one depends on it, so `--resume` after a
crash or Ctrl-C continues exactly: population, temperature position, RNG and counters.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evo.core import acceptance, decision, lineage, selection
from evo.launch.apparatus import Apparatus
from evo.storage.archive import (COMPLETE, FAIL, FAILED, FINISHED, INTERRUPTED, PRUNED, RUNNING, WAITING, Archive, ArchiveError,
                         Candidate, Run, code_hash, owner_id)
from evo.config import RunConfig
from evo.operators import Operator, OperatorError, OperatorUnavailable, Parent, Proposal
from evo.engine.seeding import SeedPlan
from evo.launch.runner import EvalResult, Limits, Slot, file_hash, kill_orphan, run_evaluation

HEARTBEAT_SECONDS = 10.0
MAX_OPERATOR_FAILURES = 20   # consecutive proposals that failed to produce code: stop proposing
EVAL_SEED_BASE = 42          # replicate r of every candidate trains with seed 42 + r (common random numbers)
MAX_FIXES_PER_LINEAGE = 1    # repair proposals along one line of descent
PAUSE_FIRST, PAUSE_MAX = 30.0, 600.0  # seconds proposals pause while the operator is unavailable
# Failures the same code on the same machine repeats: a seed failing so is not evaluated again.
DETERMINISTIC_FAILURES = frozenset({"crash", "invalid", "oom"})
# Failures that say more about this machine's load, the limits or evo itself than about the code: a
# seed that failed only so is measured again on --resume (with new allowances), not given up.
MACHINE_FAILURES = frozenset({"timeout", "over_budget", "harness"})


class EngineError(Exception):
    """The run cannot go on (the seed failed, the apparatus changed): one sentence."""


@dataclass
class _Pending:
    evaluation_id: int
    candidate_id: int
    slot: Slot
    started: float


@dataclass
class _Asked:
    """A proposal in flight: the parents it was asked for, and when (a monotonic time)."""
    parents: list[Parent]
    submitted: float


class Engine:
    def __init__(self, archive: Archive, run: Run, config: RunConfig, operator: Operator, slots: list[Slot],
                 apparatus: Apparatus, seed: SeedPlan, evaluate: Callable[..., EvalResult] = run_evaluation):
        self.archive, self.run, self.config, self.operator = archive, run, config, operator
        self.slots, self.apparatus = slots, apparatus
        self.seed = seed
        self.evaluate = evaluate  # benchmarks swap in a simulated evaluation with run_evaluation's signature
        startup, evaluation = config.allowances
        self.limits = Limits(apparatus.time_budget, startup, evaluation, run_name=config.name)
        self.rng = random.Random(config.seed)
        if run.rng_state:
            self.rng.setstate(_rng_from_json(run.rng_state))
        self.stop_proposing = threading.Event()  # first Ctrl-C
        self.kill = threading.Event()            # second Ctrl-C: running evaluations die now
        self._active_base = run.active_seconds
        self._t_start = time.monotonic()
        self._operator_failures = 0
        self.user_stopped = False
        self._proposing: dict[Future, _Asked] = {}
        self._fix_queue: list[int] = []           # crashed children waiting for a repair proposal
        self._paused_until = 0.0
        self._pause_began = float("-inf")         # when the current (or last) pause began
        self._seed_id: int | None = None
        self._pause = PAUSE_FIRST
        self._cost_capped = False
        self.status: dict[str, str] = {}          # slot name -> what it is doing, for the live view

    # ----- budget and temperature --------------------------------------------------------------

    @property
    def active_seconds(self) -> float:
        return self._active_base + time.monotonic() - self._t_start

    def _seed_number(self) -> int | None:
        run = self.archive.run_by_id(self.run.id)
        return self.archive.candidate_by_id(run.seed_id).number if run.seed_id else None

    def children_made(self) -> int:
        seed = self._seed_number()
        return self.archive.count_candidates(self.run.id, after_number=seed) if seed is not None else 0

    def progress(self) -> float:
        """Position on the cooling schedule: time spent, or children judged, against the budget."""
        seed = self._seed_number()
        judged = 0 if seed is None else self.archive.count_candidates(self.run.id, after_number=seed, judged_only=True,
                                                                      exclude_imports=True)
        return acceptance.progress(self.active_seconds, self.config.hours, judged, self.config.max_candidates)

    def temperature(self) -> float:
        t0 = self.archive.run_by_id(self.run.id).temperature0 or 0.0
        return acceptance.temperature_at(t0, self.progress(), self.config.cooling)

    def budget_left(self) -> bool:
        made = self.children_made() + len(self._proposing)  # proposals in flight will become candidates
        if self.config.max_candidates is not None and made >= self.config.max_candidates:
            return False
        return not (self.config.hours is not None and self.active_seconds >= self.config.hours * 3600)

    # ----- population ------------------------------------------------------------------------------

    def members(self) -> list[selection.Member]:
        return [selection.Member(c.id, c.val_bpb) for c in self.archive.population(self.run.id) if c.val_bpb is not None]

    # ----- the loop -----------------------------------------------------------------------------

    def execute(self) -> str:
        """Run until the budget is spent or a stop is asked for. Returns the run's final status."""
        archive, run_id = self.archive, self.run.id
        for ev in archive.evaluations(run_id):
            if ev.state == RUNNING and ev.workdir and kill_orphan(Path(ev.workdir)):
                archive.update_run(run_id, f"killed the orphaned process of evaluation {ev.id} left by a crash")
        archive.recover(run_id)
        self._queue_lost_evaluations()
        seed_id = archive.run_by_id(run_id).seed_id
        if seed_id is not None and (seed := archive.candidate_by_id(seed_id)).state == FAIL:
            if seed.accepted is None:  # it failed for reasons of this machine: measure it again
                archive.retry_failed(seed.id)
            else:
                self._seed_failed(seed)  # it failed for good: nothing to evolve
        for cand in archive.undecided(run_id):
            self._decide(cand)
        self._ensure_seed()

        eval_pool = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="evo-slot")
        running: dict[Future, _Pending] = {}
        proposing = self._proposing
        last_beat = 0.0
        try:
            while True:
                if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
                    # Raises OwnershipLost if another process took the run over: the loop ends
                    # at once, its evaluations are killed, and the archive's fence refuses
                    # to record them (the new owner runs them again).
                    archive.heartbeat(run_id, owner_id(), self.active_seconds)
                    last_beat = time.monotonic()
                self._dispatch(eval_pool, running)
                queued = len(self.archive.waiting_evaluations(run_id)) if not self.stop_proposing.is_set() else 0
                # Keep a proposal ready for every slot (plus lookahead): slots that free up while the
                # operator is still thinking would otherwise idle for a whole proposal latency.
                wanted = len(self.slots) + self.config.lookahead - queued
                while len(proposing) < wanted and self._may_propose():
                    child_rng = random.Random(self.rng.getrandbits(63))
                    if self._fix_queue:
                        failed = self._as_parent(self.archive.candidate_by_id(self._fix_queue.pop(0)))
                        proposing[_in_daemon_thread(self.operator.propose_fix, failed, child_rng)] = \
                            _Asked([failed], time.monotonic())
                    else:
                        parents = self._draw_parents()
                        proposing[_in_daemon_thread(self.operator.propose, parents, child_rng)] = \
                            _Asked(parents, time.monotonic())
                # After a stop, proposals still in flight are abandoned: an LLM call with the SDK's
                # timeout and retries can take many minutes, and would only queue unevaluated work.
                if not running and (self.stop_proposing.is_set() or (not proposing and not self._work_possible())):
                    break
                done, _ = wait([*running, *proposing], timeout=0.5, return_when=FIRST_COMPLETED)
                finished = [(running.pop(fut), fut) for fut in done if fut in running]
                for pending, _ in finished:
                    self.status.pop(pending.slot.name, None)
                if finished and not any(self._is_seed_id(p.candidate_id) for p, _ in finished):
                    # Freed slots take queued work before the bookkeeping; not while the seed is
                    # measured: a seed that fails for good must not start its next replicate.
                    self._dispatch(eval_pool, running)
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
            eval_pool.shutdown(wait=True)
            self._settle_all(running)
        status = INTERRUPTED if self.user_stopped else FINISHED
        archive.update_run(run_id, f"run {status.lower()}", status=status, active_seconds=self.active_seconds,
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

    def _may_propose(self) -> bool:
        if self.stop_proposing.is_set() or not self.budget_left():
            return False
        if self._operator_failures >= MAX_OPERATOR_FAILURES or time.monotonic() < self._paused_until:
            return False
        if self.config.max_cost is not None and self.archive.cost(self.run.id) >= self.config.max_cost:
            if not self._cost_capped:
                self._cost_capped = True
                self.archive.update_run(self.run.id, f"LLM spend reached --max-cost ${self.config.max_cost:.2f}: "
                                        "no more proposals; running evaluations finish")
            return False
        run = self.archive.run_by_id(self.run.id)
        return run.temperature0 is not None and bool(self.members())

    def _work_possible(self) -> bool:
        # While proposals are paused for an unavailable operator the run waits, it does not end.
        paused = time.monotonic() < self._paused_until and self.budget_left() and not self.stop_proposing.is_set()
        return paused or bool(self.archive.waiting_evaluations(self.run.id)) or self._may_propose()

    def _draw_parents(self) -> list[Parent]:
        chosen = selection.select_parents(self.members(), self.operator.n_parents, self.rng)
        return [self._as_parent(self.archive.candidate_by_id(m.id)) for m in chosen]

    def _as_parent(self, c: Candidate) -> Parent:
        return Parent(c.id, c.number, self.archive.code(c.code_hash), c.hypothesis, c.val_bpb)

    # ----- seed ---------------------------------------------------------------------------------

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
                                status=FAILED, active_seconds=self.active_seconds)
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
                                status=INTERRUPTED, active_seconds=self.active_seconds)
        raise EngineError(f"the seed's evaluation failed ({seed.fail_reason}: {seed.fail_detail}); once that is "
                          f"fixed, `evo run --resume --name {self.run.name}` measures the seed again.")

    def _is_seed(self, cand: Candidate) -> bool:
        return self._is_seed_id(cand.id)

    def _is_seed_id(self, candidate_id: int) -> bool:
        if self._seed_id is None:  # set once, when the seed is archived
            self._seed_id = self.archive.run_by_id(self.run.id).seed_id
        return candidate_id == self._seed_id

    # ----- evaluations -------------------------------------------------------------------------

    def _dispatch(self, pool: ThreadPoolExecutor, running: dict[Future, _Pending]) -> None:
        if self.stop_proposing.is_set():
            return  # after Ctrl-C only what already runs may finish
        busy = {p.slot.name for p in running.values()}
        in_flight = {p.evaluation_id for p in running.values()}
        free = [s for s in self.slots if s.name not in busy]
        waiting = [e for e in self.archive.waiting_evaluations(self.run.id) if e.id not in in_flight]
        for slot, ev in zip(free, waiting):
            cand = self.archive.candidate_by_id(ev.candidate_id)
            workdir = (self.archive.files / "runs" / self.run.name / f"c{cand.number:05d}" / f"r{ev.replicate}").resolve()
            self.archive.start_evaluation(ev.id, slot.name, str(workdir))
            code = self.archive.code(cand.code_hash)
            fut = pool.submit(self.evaluate, code=code, workdir=workdir, prepare_src=self.apparatus.prepare_path,
                              locked_hash=self.apparatus.locked_hash, slot=slot, seed=ev.seed, limits=self.limits,
                              preset=self.apparatus.preset, stop=self.kill)
            running[fut] = _Pending(ev.id, cand.id, slot, time.monotonic())
            self.status[slot.name] = f"candidate {cand.number} r{ev.replicate}"

    def _finish(self, pending: _Pending, fut: Future) -> None:
        fail_reason = self._settle(pending, fut)
        if fail_reason == "interrupted":
            return  # queued again on resume; nothing to decide yet
        cand = self.archive.candidate_by_id(pending.candidate_id)
        if fail_reason in DETERMINISTIC_FAILURES and cand.n_evals == 0 and self._is_seed(cand):
            # The same code on the same machine fails the same way: replicating it only wastes slots.
            self.archive.cancel_waiting(cand.id, f"the seed failed ({fail_reason}); it would fail again")
            cand = self.archive.candidate_by_id(cand.id)
        if cand.state in (COMPLETE, FAIL) and cand.accepted is None:
            self._decide(cand)

    def _settle(self, pending: _Pending, fut: Future) -> str | None:
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
                                           wall_seconds=time.monotonic() - pending.started, harness_seconds=0.0,
                                           log_tail="")
            if changed:
                self.stop_proposing.set()
                raise EngineError(f"{detail}; restore it, then --resume.") from None
            return reason

    def _settle_all(self, running: dict[Future, _Pending]) -> None:
        """At shutdown: record every evaluation that ended, even when one of them cannot be (the
        apparatus changed, the run was taken over), then raise the first such error."""
        errors: list[Exception] = []
        for fut, pending in running.items():
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

    def _record(self, pending: _Pending, result: EvalResult) -> None:
        o = result.outcome
        self.archive.finish_evaluation(pending.evaluation_id, state=o.state, fail_reason=o.fail_reason, detail=o.detail,
                                       metrics=o.summary, curve=result.curve, returncode=result.returncode,
                                       wall_seconds=result.wall_seconds, harness_seconds=result.harness_seconds,
                                       log_tail=result.log_tail)

    # ----- proposals ----------------------------------------------------------------------------

    def _admit(self, asked: _Asked, fut: Future) -> None:
        """Store what the operator proposed: a new candidate queued for evaluation, a duplicate
        pruned at no slot cost, or a failure to propose archived as FAIL(invalid). An unavailable
        operator archives nothing and pauses proposals."""
        parents = asked.parents
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
            # An unusable proposal is the operator's failure (invalid); anything else is evo's own (harness).
            reason, detail = ("invalid", str(e)) if isinstance(e, OperatorError) else \
                ("harness", f"the operator raised {type(e).__name__}: {e}")
            self.archive.add_candidate(self.run.id, code=parents[0].code,
                                       operator=getattr(e, "operator", None) or self.operator.name,
                                       parent_id=parents[0].id, parent2_id=parents[1].id if len(parents) > 1 else None,
                                       hypothesis="(no proposal)", rng_state=rng_state, state=FAIL,
                                       fail_reason=reason, fail_detail=detail,
                                       llm_calls=getattr(e, "llm_calls", None) or ())
            return
        self._operator_failures = 0
        self._resume_proposals()
        extra = proposal.extra
        second = parents[1].id if len(parents) > 1 and extra.get("parent2_used") else None
        common = dict(code=proposal.code, operator=extra.get("operator", self.operator.name), parent_id=parents[0].id,
                      parent2_id=second, hypothesis=proposal.hypothesis, rationale=proposal.rationale,
                      model=proposal.model, rng_state=rng_state, llm_calls=extra.get("llm_calls", ()))
        twin = self.archive.find_code(self.run.id, code_hash(proposal.code))
        if twin is not None:
            self.archive.add_candidate(self.run.id, **common, state=PRUNED, fail_reason="duplicate",
                                       fail_detail=f"same code as candidate {twin.number}; its result stands")
            return
        self.archive.add_candidate(self.run.id, **common, evaluation_seeds=self._replicate_seeds(0, 1))

    def _pause_proposals(self, error: OperatorUnavailable, submitted: float) -> None:
        """Pause proposals, doubling the pause once per outage: proposals asked before the current
        pause began failed in the outage it already answers (8 slots must not mean 8 doublings)."""
        if error.llm_calls:
            self.archive.record_llm_calls(self.run.id, error.llm_calls)
        if submitted < self._pause_began:
            return
        self._pause_began = time.monotonic()
        self._paused_until = self._pause_began + self._pause
        self.archive.update_run(self.run.id, f"operator unavailable ({error}); pausing proposals for "
                                f"{self._pause:.0f}s, evaluations go on")
        self._pause = min(PAUSE_MAX, self._pause * 2)

    def _resume_proposals(self) -> None:
        if self._pause > PAUSE_FIRST:
            self.archive.update_run(self.run.id, "operator available again: proposals resumed")
            self._pause = PAUSE_FIRST

    def _wants_fix(self, cand: Candidate) -> bool:
        """A crashed child may get one repair proposal, bounded per line of descent."""
        if cand.fail_reason != "crash" or not self.operator.repairs or self._is_seed(cand):
            return False
        line = lineage.first_parents(cand, self.archive.candidate_by_id)
        return sum(node.hypothesis.startswith("fix:") for node in line) < MAX_FIXES_PER_LINEAGE

    # ----- acceptance -------------------------------------------------------------------------

    def _decide(self, cand: Candidate) -> None:
        run_id = self.run.id
        if cand.state == FAIL:
            if self._is_seed(cand) and self._seed_may_retry(cand):
                self._seed_interrupted(cand)
            self.archive.decide(cand.id, accepted=False, temperature=None, probability=0.0, delta=None,
                                competitor_id=None, leaving=[], reason=f"failed ({cand.fail_reason})")
            if self._is_seed(cand):
                self._seed_failed(cand)
            if self._wants_fix(cand):
                self._fix_queue.append(cand.id)
            return
        if self._is_seed(cand):
            values = [e.val_bpb for e in self.archive.evaluations(run_id, cand.id) if e.state == COMPLETE]
            sigma = acceptance.noise_sigma(values)
            try:
                t0 = acceptance.initial_temperature(self.config.temperature, sigma)
            except ValueError:  # replicates all failed but one: fall back to greedy, say so
                t0 = 0.0
            self.archive.update_run(run_id, f"noise σ = {sigma if sigma is not None else float('nan'):.6f} from "
                                    f"{len(values)} replicates; T0 = {t0:.6f}", sigma=sigma, temperature0=t0)
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
        if judged and cand.model:  # feeds the model bandit
            spent = sum(c.cost_usd for c in self.archive.llm_calls(run_id) if c.candidate_id == cand.id)
            self.operator.record_outcome(cand.model, verdict.delta < 0, spent)


def _in_daemon_thread(fn: Callable[..., Proposal], *args: Any) -> Future:
    """Run one proposal in a daemon thread: after a stop an LLM call still in flight is abandoned,
    and the process exits without joining it (ThreadPoolExecutor's workers are joined at exit)."""
    fut: Future = Future()
    fut.set_running_or_notify_cancel()

    def work() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the loop, which decides what it means
            fut.set_exception(e)

    threading.Thread(target=work, name="evo-propose", daemon=True).start()
    return fut


def _rng_to_json(rng: random.Random) -> str:
    version, state, gauss = rng.getstate()
    return json.dumps([version, list(state), gauss])


def _rng_from_json(text: str) -> tuple:
    version, state, gauss = json.loads(text)
    return version, tuple(state), gauss
