"""Synthetic runs for tests and benchmarks of the report: `synthesize(archive, n)` writes a run of
n children through the real `Archive` API (create_run, add_candidate, queue/start/finish
evaluation, decide), with a lineage that looks like a night of evo: a seed measured three times,
mutate/crossover/merge/tweak children with hypotheses and LLM calls, Metropolis decisions on a
cooling schedule, confirmations of would-be bests, failures of every kind, pruned duplicates,
several slots, training curves and log tails. Timestamps follow a simulated clock (evaluations of
`budget` seconds on `slots` slots), so time axes look like a real run.

Nothing here is used by `evo report` itself.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, update

from evo.storage.archive import COMPLETE, FAIL, FINISHED, PRUNED, Archive, Candidate, Evaluation, LLMCall, Run, utcnow
from evo.core.acceptance import noise_sigma
from evo.operators.tweak import _format, find_constants, perturb

MODELS = ("claude-sonnet-4-5", "gpt-5-mini")
IDEAS = (
    "raise the Muon learning rate", "lower weight decay", "longer warmdown", "shorter warmdown",
    "add QK-norm to attention", "use a wider MLP", "drop the value embeddings", "softcap logits lower",
    "more Newton-Schulz steps", "tie embeddings", "smaller batch, more steps", "bigger head dim",
    "swap ReLU² for SwiGLU", "warm up momentum longer", "scale residual lambdas", "sliding window on all but last",
)
REASONS = (("crash", 0.4), ("oom", 0.2), ("timeout", 0.15), ("nan", 0.15), ("invalid", 0.1))


def default_code(lines: int = 300) -> str:
    """A train.py-like text with tweakable constants, for when no real seed is given."""
    head = ["\"\"\"Synthetic train.py.\"\"\"", "import math", "", "DEPTH = 8", "ASPECT_RATIO = 64",
            "HEAD_DIM = 128", "TOTAL_BATCH_SIZE = 2**19", "DEVICE_BATCH_SIZE = 32", "EMBEDDING_LR = 0.6",
            "UNEMBEDDING_LR = 0.004", "MATRIX_LR = 0.04", "SCALAR_LR = 0.5", "WEIGHT_DECAY = 0.2",
            "WARMDOWN_RATIO = 0.5", "MUON_MOMENTUM = 0.95", ""]
    body = [f"def block_{k}(x):\n    y = x * {k + 1} + math.sin(x)  # layer {k}\n    return y\n"
            for k in range(max(1, (lines - len(head)) // 4))]
    return "\n".join(head) + "\n" + "\n".join(body)


class _Code:
    """Renders a candidate's code from constant values and line edits, fast."""

    def __init__(self, code: str):
        self.constants = find_constants(code)
        self.pieces, cursor = [], 0
        self.originals = [code[c.start:c.end] for c in self.constants]
        for c in self.constants:
            self.pieces.append(code[cursor:c.start])
            cursor = c.end
        self.pieces.append(code[cursor:])
        const_lines = {code.count("\n", 0, c.start) for c in self.constants}
        lines = code.splitlines()
        self.editable = [i for i, line in enumerate(lines)
                         if i not in const_lines and line.strip() and not line.rstrip().endswith(("\\", ":"))
                         and not line.lstrip().startswith(("#", '"', "'")) and i > 5]

    def render(self, values: tuple, edits: dict[int, str]) -> str:
        out = [self.pieces[0]]
        for c, original, v, piece in zip(self.constants, self.originals, values, self.pieces[1:]):
            out += [_format(v, c) if v != c.value else original, piece]
        code = "".join(out)
        if not edits:
            return code
        lines = code.split("\n")
        for i, suffix in edits.items():
            if i < len(lines):
                lines[i] = lines[i] + suffix
        return "\n".join(lines)


def synthesize(archive: Archive, n: int, *, name: str = "synthetic", seed: int = 0, code: str | None = None,
               slots: int = 4, population: int = 8, budget: float = 300.0, llm: bool = True,
               start: datetime | None = None, live: bool = False, fail_rate: float = 0.08,
               duplicate_rate: float = 0.02, curve_points: int = 30) -> Run:
    """Write a run named `name` with a seed and `n` children into `archive`. `live` leaves the
    run ACTIVE with its last evaluations RUNNING and one WAITING, as a report sees a run in
    progress."""
    rng = random.Random(seed)
    template = _Code(code if code is not None else default_code())
    if not template.constants:
        raise ValueError("the seed code has no top-level UPPERCASE numeric constants to vary")
    k = len(template.constants)
    v0 = tuple(c.value for c in template.constants)
    optimum = [math.log(abs(float(v))) + rng.gauss(0.0, 0.5) for v in v0]
    weight = [0.004 + 0.02 * rng.random() for _ in range(k)]
    sigma_true = 0.0008

    def truth(values: tuple, edits: dict) -> float:
        x = sum(w * (math.log(abs(float(v))) - o) ** 2 for w, v, o in zip(weight, values, optimum))
        return 0.95 + x + 0.0007 * ((sum(edits) * 7919) % 13 - 6) / 6

    config = {"name": name, "preset": "gpu", "population": population, "temperature": "auto", "cooling": "exp",
              "replicates": 3, "confirm": True, "hours": round(n * budget * 1.15 / slots / 3600, 2),
              "max_candidates": n, "operator": "llm" if llm else "tweak", "seed_train": "seed_train.py",
              "program": "program.md", "gpus": ",".join(str(s) for s in range(slots)), "slots": None,
              "lookahead": 1, "seed": seed, "models": list(MODELS) if llm else [], "max_cost": None}
    run = archive.create_run(name, config)
    t_start = start or datetime(2026, 3, 5, 22, 0, tzinfo=timezone.utc)
    free = [0.0] * slots                         # simulated seconds at which each slot is free
    times_cand: dict[int, tuple[float, float | None]] = {}
    times_eval: dict[int, tuple[float, float]] = {}
    times_call: list[float] = []
    slot_names = [f"gpu{s}" for s in range(slots)]
    state = {"clock": 0.0}

    def evaluate(cand_id: int, replicate: int, value: float | None, reason: str | None, ready: float,
                 finish: bool = True) -> tuple[float, float]:
        ev = archive.queue_evaluation(run.id, cand_id, replicate, 42 + replicate)
        s = min(range(slots), key=lambda j: free[j])
        begin = max(free[s], ready) + rng.uniform(0.5, 3.0)
        archive.start_evaluation(ev.id, slot_names[s], f"/tmp/evo/{name}/c{cand_id}/r{replicate}")
        if not finish:
            free[s] = begin + budget * 1.1
            times_eval[ev.id] = (begin, None)
            return begin, begin
        if reason is None:
            wall = budget + rng.uniform(25.0, 45.0)
        else:
            wall = {"timeout": budget + 300.0, "oom": rng.uniform(20, 60), "crash": rng.uniform(5, 40),
                    "nan": rng.uniform(30, budget)}.get(reason, 10.0)
        end = begin + wall
        free[s] = end
        times_eval[ev.id] = (begin, end)
        steps = max(3, curve_points)
        trained = min(wall, budget) if reason is None else wall * 0.8
        curve = [(j, trained * j / steps, 2.8 + 6.0 * math.exp(-6.0 * j / steps) + (value or 3.0) - 1.0
                  + rng.gauss(0, 0.01)) for j in range(1, steps + 1)] if reason in (None, "nan", "timeout") else []
        lines = [f"step {j:05d} | elapsed: {t:.1f}s | loss: {loss:.6f} | lrm: 1.00" for j, t, loss in curve[-20:]]
        if reason is None:
            metrics = {"val_bpb": value, "training_seconds": budget, "total_seconds": wall - 2.0,
                       "peak_vram_mb": 44000.0 + rng.uniform(-3000, 3000), "mfu_percent": 38.0 + rng.uniform(-4, 4),
                       "total_tokens_M": 480.0, "num_steps": 950, "num_params_M": 124.5, "depth": 8}
            lines += ["---"] + [f"{key + ':':<18}{v:.6f}" if isinstance(v, float) else f"{key + ':':<18}{v}"
                                for key, v in metrics.items()]
            archive.finish_evaluation(ev.id, state=COMPLETE, fail_reason=None, detail="", metrics=metrics, curve=curve,
                                      returncode=0, wall_seconds=wall, harness_seconds=1.5, log_tail="\n".join(lines))
        else:
            detail = {"crash": "Traceback (most recent call last): ... RuntimeError: shape mismatch",
                      "oom": "CUDA out of memory. Tried to allocate 2.00 GiB",
                      "timeout": f"no summary after {budget + 300:.0f}s; killed",
                      "nan": "loss is nan at step 412"}.get(reason, reason)
            lines += [detail]
            archive.finish_evaluation(ev.id, state=FAIL, fail_reason=reason, detail=detail, metrics=None, curve=curve,
                                      returncode=1, wall_seconds=wall, harness_seconds=1.5, log_tail="\n".join(lines))
        return begin, end

    # ----- the seed, measured `replicates` times --------------------------------------------------
    seed_values, seed_edits = v0, {}
    seed_cand = archive.add_candidate(run.id, code=template.render(v0, {}), operator="seed", hypothesis="seed",
                                      is_seed=True)
    values = []
    ends = []
    base = truth(v0, {})
    for r in range(3):
        value = base + rng.gauss(0.0, sigma_true)
        values.append(value)
        ends.append(evaluate(seed_cand.id, r, value, None, 0.0)[1])
    mean = sum(values) / 3
    sigma = noise_sigma(values)
    t0 = 2 * sigma
    times_cand[seed_cand.id] = (0.0, max(ends))
    archive.update_run(run.id, f"noise σ = {sigma:.6f} from 3 replicates; T0 = {t0:.6f}", sigma=sigma, temperature0=t0)
    archive.decide(seed_cand.id, accepted=True, temperature=t0, probability=1.0, delta=None, competitor_id=None,
                   leaving=[], reason="seed")
    state["clock"] = max(ends)

    members: dict[int, tuple[float, tuple, dict]] = {seed_cand.id: (mean, seed_values, seed_edits)}
    codes: list[str] = [template.render(v0, {})]
    best_id = seed_cand.id

    for j in range(1, n + 1):
        ready = min(free) - rng.uniform(5.0, 60.0)
        ready = max(ready, state["clock"] - 400.0)
        progress_ = j / n
        temperature = t0 * 0.05 ** progress_
        ids = list(members)
        pick = lambda: min(rng.sample(ids, min(2, len(ids))), key=lambda m: members[m][0])  # noqa: E731
        parent = pick()
        pv, pval, pedits = members[parent]
        roll = rng.random()
        operator = ("mutate" if roll < 0.6 else "crossover" if roll < 0.8 else "merge" if roll < 0.85 else "tweak") \
            if llm else "tweak"
        parent2 = None
        new_vals = list(pval)
        new_edits = dict(pedits)
        if operator in ("crossover", "merge") and len(ids) > 1:
            # the child keeps its first parent and takes a few of the other's ideas
            parent2 = rng.choice([m for m in ids if m != parent])
            other = members[parent2]
            for a in range(k):
                if other[1][a] != new_vals[a] and rng.random() < 0.3:
                    new_vals[a] = other[1][a]
            theirs = sorted(e for e in other[2] if new_edits.get(e) != other[2][e])
            for e in rng.sample(theirs, min(len(theirs), rng.choice((1, 2, 3)))):
                new_edits[e] = other[2][e]
        elif operator in ("crossover", "merge"):
            operator = "mutate"
        changes = []
        for a in rng.sample(range(k), rng.choice((1, 1, 2))):
            old = new_vals[a]
            new_vals[a] = perturb(template.constants[a].__class__(template.constants[a].name, old, 0, 0,
                                                                  template.constants[a].power_of_two), rng)
            changes.append((template.constants[a].name, old, new_vals[a]))
        idea = rng.choice(IDEAS)
        if operator != "tweak" and template.editable:
            for _ in range(rng.choice((1, 2, 3))):
                new_edits[rng.choice(template.editable)] = f"  # {idea} (#{j})"
        new_vals = tuple(new_vals)
        change_text = ", ".join(f"{nm} {a:g} -> {b:g}" for nm, a, b in changes)
        hypothesis = f"tweak {change_text}" if operator == "tweak" else f"{idea}; {change_text}"
        rationale = "" if operator == "tweak" else (
            f"The parent's curve flattens early, which suggests {idea} could help: {change_text}. "
            f"Expected gain about {rng.uniform(0.5, 3):.1f}e-3 val_bpb.")
        model = rng.choice(MODELS) if operator != "tweak" else None
        calls = [] if model is None else [dict(model=model, purpose=operator, tokens_in=rng.randint(9000, 14000),
                                               tokens_out=rng.randint(400, 2500), latency_s=rng.uniform(5, 40),
                                               cost_usd=round(rng.uniform(0.01, 0.08), 4))]
        times_call.extend([ready] * len(calls))
        roll = rng.random()
        if roll < duplicate_rate and len(codes) > 1:
            code = rng.choice(codes[-50:])
            cand = archive.add_candidate(run.id, code=code, operator=operator, parent_id=parent, parent2_id=parent2,
                                         hypothesis=hypothesis, rationale=rationale, model=model, state=PRUNED,
                                         fail_reason="duplicate", fail_detail="same code as an earlier candidate",
                                         llm_calls=calls)
            times_cand[cand.id] = (ready, ready)
            continue
        code = template.render(new_vals, new_edits)
        if code in codes[-50:]:
            code += f"\n# variant {j}\n"
        reason = None
        if roll < duplicate_rate + fail_rate:
            reason = rng.choices([r for r, _ in REASONS], [w for _, w in REASONS])[0]
        if reason == "invalid":
            cand = archive.add_candidate(run.id, code=codes[-1], operator=operator, parent_id=parent,
                                         parent2_id=parent2, hypothesis="(no proposal)", state=FAIL,
                                         fail_reason="invalid", fail_detail="the reply had no code block",
                                         model=model, llm_calls=calls)
            times_cand[cand.id] = (ready, ready)
            continue
        codes.append(code)
        cand = archive.add_candidate(run.id, code=code, operator=operator, parent_id=parent, parent2_id=parent2,
                                     hypothesis=hypothesis, rationale=rationale, model=model, llm_calls=calls)
        true = truth(new_vals, new_edits)
        if live and j == n:       # queued, waiting for a slot
            archive.queue_evaluation(run.id, cand.id, 0, 42)
            times_cand[cand.id] = (ready, None)
            continue
        if live and j >= n - slots:  # running now
            evaluate(cand.id, 0, None, None, ready, finish=False)
            times_cand[cand.id] = (ready, None)
            continue
        value = true + rng.gauss(0.0, sigma_true)
        _, end = evaluate(cand.id, 0, value if reason is None else None, reason, ready)
        state["clock"] = max(state["clock"], end)
        if reason is not None:
            archive.decide(cand.id, accepted=False, temperature=None, probability=0.0, delta=None, competitor_id=None,
                           leaving=[], reason=f"failed ({reason})")
            times_cand[cand.id] = (ready, end)
            continue
        best_value = members[best_id][0]
        n_vals = [value]
        if value < best_value:  # confirm a would-be best with a second evaluation
            second = true + rng.gauss(0.0, sigma_true)
            _, end = evaluate(cand.id, 1, second, None, end)
            n_vals.append(second)
        mean = sum(n_vals) / len(n_vals)
        times_cand[cand.id] = (ready, end)
        competitor = parent if parent in members else max(members, key=lambda m: members[m][0])
        delta = mean - members[competitor][0]
        p = 1.0 if delta <= 0 else (math.exp(-delta / temperature) if temperature > 0 else 0.0)
        ok = rng.random() < p
        leaving = []
        if ok:
            if len(members) >= population:
                out = competitor if competitor != best_id else max((m for m in members if m != best_id),
                                                                   key=lambda m: members[m][0], default=None)
                if out is not None:
                    leaving = [out]
                    del members[out]
            members[cand.id] = (mean, new_vals, new_edits)
            if mean < best_value:
                best_id = cand.id
        archive.decide(cand.id, accepted=ok, temperature=temperature, probability=p, delta=delta,
                       competitor_id=competitor, leaving=leaving,
                       reason=f"Δ {delta:+.6f}, T {temperature:.6f}, p {p:.3f}")

    # ----- the simulated clock onto the rows ---------------------------------------------------------
    at = lambda s: None if s is None else t_start + timedelta(seconds=s)  # noqa: E731
    with archive.session() as s:
        conn = s.connection()
        if times_cand:
            conn.execute(update(Candidate).where(Candidate.id == bindparam("cid"))
                         .values(created_at=bindparam("c_at"), finished_at=bindparam("f_at")),
                         [{"cid": cid, "c_at": at(a), "f_at": at(b)} for cid, (a, b) in times_cand.items()])
        if times_eval:
            conn.execute(update(Evaluation).where(Evaluation.id == bindparam("eid"))
                         .values(started_at=bindparam("s_at"), finished_at=bindparam("f_at")),
                         [{"eid": eid, "s_at": at(a), "f_at": at(b)} for eid, (a, b) in times_eval.items()])
        call_ids = [c.id for c in s.exec(_calls(run.id))]
        if call_ids and times_call:
            conn.execute(update(LLMCall).where(LLMCall.id == bindparam("lid")).values(at=bindparam("l_at")),
                         [{"lid": lid, "l_at": at(t)} for lid, t in zip(call_ids, times_call)])
        r = s.get(Run, run.id)
        end = max(free)
        r.created_at = t_start - timedelta(seconds=30)
        r.active_seconds = end
        if live:
            r.heartbeat_at, r.owner = utcnow(), "synthetic:1"  # running now, on another host
        else:
            r.status, r.finished_at = FINISHED, t_start + timedelta(seconds=end)
        s.add(r)
    return archive.run_by_id(run.id)


def _calls(run_id: int):
    from sqlmodel import select
    return select(LLMCall).where(LLMCall.run_id == run_id).order_by(LLMCall.id)
