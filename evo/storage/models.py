"""The archive's tables, its lifecycle states and run statuses, and the pure rules over their rows
(content hash, timestamps, a candidate's state from its evaluations). No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from hashlib import sha256
from typing import Any, Iterable, Optional

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from evo.core.acceptance import noise_sigma
from evo.core.early_stop import FAIL_REASON as EARLY_STOP
from evo.launch.logs import SUMMARY_KEYS

# 2: Candidate.fix (a repair proposal) replaced the "fix:" hypothesis prefix as the marker.
# 3: Candidate.val_bpb_post, the mean of its reporting evaluations (post_selection_mean).
# 4: stored diffs (CandidateDiff); spend, children and waiting evaluations by index.
# 5: the harness's start-up and training seconds per evaluation, a run's slot-seconds (the "busy"
#    figure's parts), the load an evaluation started under; the engine's per-decision reads (σ̂'s
#    groups, the population, the judged count) by covering index.
SCHEMA_VERSION = 6

# Lifecycle states (Optuna's names)
WAITING, RUNNING, COMPLETE, FAIL, PRUNED = "WAITING", "RUNNING", "COMPLETE", "FAIL", "PRUNED"
NO_PROPOSAL = "(no proposal)"  # the hypothesis of a proposal that produced no code (FAIL invalid/harness)
# Run status (FAILED: the seed failed, so the run cannot go on; a new run must start it again)
ACTIVE, FINISHED, INTERRUPTED, FAILED = "ACTIVE", "FINISHED", "INTERRUPTED", "FAILED"

# The summary metrics an evaluation stores, one Evaluation column each: the log parser's keys.
METRICS: tuple[str, ...] = SUMMARY_KEYS
WHOLE_METRICS = ("num_steps", "depth")  # integer columns


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def seconds_since(moment: datetime, now: datetime | None = None) -> float:
    """Age of a stored timestamp at `now` (default: the present); some databases hand back naive
    UTC values."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return ((now or utcnow()) - moment).total_seconds()


def code_hash(code: str) -> str:
    return sha256(code.encode("utf-8")).hexdigest()


def metric_values(metrics: dict[str, float] | None) -> dict[str, float | int | None]:
    """The Evaluation columns to set from a parsed summary: only the metric columns (never seed,
    state, id or the harness's timings, which a candidate may have printed), whole ones as
    integers (None beyond a 64-bit integer)."""
    out: dict[str, float | int | None] = {}
    for key, value in (metrics or {}).items():
        if key in METRICS:
            out[key] = (int(value) if abs(value) < 2**63 else None) if key in WHOLE_METRICS else value
    return out


@dataclass(frozen=True)
class Derived:
    """A candidate's statistics and state as its evaluations make them (see `derive_candidate`)."""
    state: str
    n_evals: int
    val_bpb: float | None              # mean over COMPLETE evaluations; None when there is none
    val_bpb_std: float | None
    fail_reason: str | None = None     # of the last failed evaluation, when the state is FAIL (or PRUNED: early_stop)
    fail_detail: str | None = None


def derive_candidate(evaluations: Iterable[Any]) -> Derived:
    """THE rule for a candidate's state, from its evaluations (rows with state, val_bpb,
    fail_reason, detail; oldest first): WAITING or RUNNING while any is pending, PRUNED(early_stop)
    when one was stopped early against its parent's curve and none completed, FAIL when some failed
    and none completed, else COMPLETE."""
    evs = list(evaluations)
    done = [e.val_bpb for e in evs if e.state == COMPLETE]
    mean = sum(done) / len(done) if done else None
    std = noise_sigma(done) if done else None
    pending = [e for e in evs if e.state in (WAITING, RUNNING)]
    failed = [e for e in evs if e.state == FAIL]
    if pending:
        state = RUNNING if any(e.state == RUNNING for e in pending) else WAITING
        return Derived(state, len(done), mean, std)
    stopped = [e for e in evs if e.state == PRUNED and e.fail_reason == EARLY_STOP]
    if stopped and not done:
        return Derived(PRUNED, 0, None, None, EARLY_STOP, stopped[-1].detail)
    if failed and not done:
        return Derived(FAIL, 0, None, None, failed[-1].fail_reason, failed[-1].detail)
    return Derived(COMPLETE, len(done), mean, std)


# The final re-measure's evaluations have replicate numbers of their own, apart from any replicate or
# confirmation (--replicates is at most 100), so the archive alone says how far it got: a finalist's
# choosing evaluation is CHOOSING_REPLICATE, the chosen best's reporting ones REPORTING_REPLICATE on.
CHOOSING_REPLICATE = 500
REPORTING_REPLICATE = 1000


def post_selection_mean(evaluations: Iterable[Any]) -> float | None:
    """Mean val_bpb of a candidate's COMPLETE reporting evaluations (replicate >= REPORTING_REPLICATE):
    those the final re-measure made after choosing it as the run's best, so no choice looked at
    them (selection.REMEASURE_REPORTING). None when there is none."""
    later = [e.val_bpb for e in evaluations
             if e.state == COMPLETE and e.replicate >= REPORTING_REPLICATE and e.val_bpb is not None]
    return sum(later) / len(later) if later else None


def busy_share(trained_seconds: float, slot_seconds: float) -> float | None:
    """THE "busy" figure: the share of the slots' time spent training (Σ training seconds ÷ (slots ×
    active time)); None before any slot time was spent. Start-up, the final evaluation, the harness
    and idle slots are what keeps it below 1."""
    return min(1.0, trained_seconds / slot_seconds) if slot_seconds > 0 else None


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

class Meta(SQLModel, table=True):
    key: str = Field(primary_key=True)
    value: str


class Code(SQLModel, table=True):
    """Content-addressed train.py source: identical code is stored, and trained, once."""
    hash: str = Field(primary_key=True)
    text: str = Field(sa_column=Column(Text, nullable=False))


class Run(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    status: str = ACTIVE
    config: str = Field(sa_column=Column(Text, nullable=False))   # JSON of RunConfig
    sigma: Optional[float] = None              # run-to-run noise of the seed, in val_bpb
    temperature0: Optional[float] = None       # resolved initial temperature
    rng_state: Optional[str] = Field(default=None, sa_column=Column(Text))  # JSON of random.getstate()
    next_number: int = 0
    seed_id: Optional[int] = None              # the candidate the population starts from
    active_seconds: float = 0.0                # wall time spent running, summed over resumes
    slot_seconds: float = 0.0                  # slots × wall time running, summed over resumes
    owner: Optional[str] = None                # host:pid:start of the process running it (see owner_id)
    heartbeat_at: Optional[datetime] = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None


class Candidate(SQLModel, table=True):
    # The population, and the children judged so far (the cooling schedule's position), by covering index.
    __table_args__ = (UniqueConstraint("run_id", "number"), Index("ix_candidate_run_population", "run_id", "in_population", "number"),
                      Index("ix_candidate_run_judged", "run_id", "number", "accepted", "operator"))
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    number: int
    parent_id: Optional[int] = Field(default=None, foreign_key="candidate.id", index=True)
    parent2_id: Optional[int] = Field(default=None, foreign_key="candidate.id")
    operator: str
    code_hash: str = Field(foreign_key="code.hash", index=True)
    hypothesis: str = ""
    rationale: str = Field(default="", sa_column=Column(Text))
    model: Optional[str] = None                # LLM that proposed it, if any
    state: str = WAITING
    fail_reason: Optional[str] = None
    fail_detail: Optional[str] = Field(default=None, sa_column=Column(Text))
    val_bpb: Optional[float] = None            # mean over COMPLETE evaluations
    imported_val_bpb: Optional[float] = None   # what another machine measured (greedy results.tsv, another run)
    val_bpb_std: Optional[float] = None
    val_bpb_post: Optional[float] = None       # mean of its reporting evaluations (post_selection_mean)
    n_evals: int = 0
    accepted: Optional[bool] = None
    accept_temperature: Optional[float] = None
    accept_probability: Optional[float] = None
    accept_delta: Optional[float] = None       # val_bpb minus its competitor's
    competitor_id: Optional[int] = None
    in_population: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None
    fix: bool = False                          # a repair of its crashed parent (bounded per line of descent)


class CandidateDiff(SQLModel, table=True):
    """A candidate's unified diff against its first parent, made once when it is archived (the report
    and `evo show` would otherwise diff every candidate again each time)."""
    candidate_id: int = Field(foreign_key="candidate.id", primary_key=True)
    text: str = Field(sa_column=Column(Text, nullable=False))


class Evaluation(SQLModel, table=True):
    # (run, state) finds waiting evaluations in id order; with candidate and value, σ̂'s groups are an index-only read.
    __table_args__ = (UniqueConstraint("candidate_id", "replicate"), Index("ix_evaluation_run_state", "run_id", "state"),
                      Index("ix_evaluation_run_state_values", "run_id", "state", "candidate_id", "val_bpb"))
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    candidate_id: int = Field(foreign_key="candidate.id", index=True)
    replicate: int                             # 0, 1, ...: each gets its own seed
    seed: int
    state: str = WAITING
    fail_reason: Optional[str] = None
    detail: Optional[str] = Field(default=None, sa_column=Column(Text))
    slot: Optional[str] = None
    returncode: Optional[int] = None
    val_bpb: Optional[float] = None
    training_seconds: Optional[float] = None
    total_seconds: Optional[float] = None
    peak_vram_mb: Optional[float] = None
    mfu_percent: Optional[float] = None
    total_tokens_M: Optional[float] = None
    num_steps: Optional[int] = None
    num_params_M: Optional[float] = None
    depth: Optional[int] = None
    wall_seconds: Optional[float] = None
    harness_seconds: Optional[float] = None    # wall time outside the candidate's process
    startup_seconds: Optional[float] = None    # process start to the training clock, by the harness's clock
    trained_seconds: Optional[float] = None    # training by the harness's clock (training_seconds is the candidate's word)
    load_avg: Optional[float] = None           # the machine's 1-minute load average when it started
    cores: Optional[int] = None                # the machine's CPU count then (what the load is measured against)
    workdir: Optional[str] = None
    log_tail: Optional[str] = Field(default=None, sa_column=Column(Text))
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None


class CurvePoint(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    evaluation_id: int = Field(foreign_key="evaluation.id", index=True)
    step: int
    elapsed: float
    loss: float


class Event(SQLModel, table=True):
    __table_args__ = (Index("ix_event_run_at", "run_id", "id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id")
    candidate_id: Optional[int] = None
    at: datetime = Field(default_factory=utcnow)
    kind: str
    message: str = Field(sa_column=Column(Text, nullable=False))
    data: Optional[str] = Field(default=None, sa_column=Column(Text))


class LLMCall(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    candidate_id: Optional[int] = Field(default=None, foreign_key="candidate.id", index=True)
    at: datetime = Field(default_factory=utcnow)
    model: str
    purpose: str = "mutate"
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    prompt: Optional[str] = Field(default=None, sa_column=Column(Text))
    response: Optional[str] = Field(default=None, sa_column=Column(Text))
