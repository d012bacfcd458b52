"""Slot idle share with an LLM operator whose every call takes half a training budget. Target < 5 %.

The real Engine and the real LLMOperator (openai SDK) run against the fake OpenAI-compatible server
from tests/llm_server.py with its latency set to B/2; evaluations are simulated (sleep B, score the
surrogate landscape) so the measurement is about proposal pipelining, not training.

    python3 bench/llm_slot_idle.py                   # 2 slots, B = 2 s, 30 candidates (about 1 minute)
    python3 bench/llm_slot_idle.py --budget 4 --candidates 60 --lookahead 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SURROGATE, header, table
from slot_utilisation import make_evaluate, utilisation

sys.path.insert(0, str(ROOT / "tests"))
from llm_server import FakeLLMServer  # noqa: E402

from evo import operators  # noqa: E402
from evo.launch.apparatus import Apparatus, load  # noqa: E402
from evo.storage import Archive  # noqa: E402
from evo.config import RunConfig  # noqa: E402
from evo.engine.loop import Engine
from evo.engine.seeding import SeedPlan  # noqa: E402
from evo.launch.runner import Slot  # noqa: E402


def one_run(server: FakeLLMServer, args: argparse.Namespace, lookahead: int, root: Path) -> dict:
    archive = Archive(f"sqlite:///{root}/llm-{lookahead}.db")
    config = RunConfig(name=f"l{lookahead}", preset="smoke", population=4, temperature=0.001, replicates=2,
                       max_candidates=args.candidates, lookahead=lookahead, operator="llm",
                       models=[f"openai:fake@{server.openai_url}"], program=str(ROOT / "program.md")).validate()
    run = archive.create_run(config.name, config.to_dict())
    app = Apparatus(prepare_path=SURROGATE / "prepare.py", preset="smoke", locked_hash="x", time_budget=args.budget,
                    manifest=Path("."),
                    allowances=load(SURROGATE / "prepare.py", "smoke").allowances, seed_sizes={})
    slots = [Slot(f"cpu{i}") for i in range(args.slots)]
    op = operators.build(config, archive, run.id, {"preset": "smoke", "device": "simulated", "slots": str(args.slots)})
    engine = Engine(archive, run, config, op, slots, app, SeedPlan((SURROGATE / "train.py").read_text()),
                    evaluate=make_evaluate(args.budget, 0.0))
    t0 = time.monotonic()
    engine.execute()
    wall = time.monotonic() - t0
    evs = [e for e in archive.evaluations(run.id) if e.started_at and e.finished_at]
    spans = [(e.started_at.timestamp(), e.finished_at.timestamp()) for e in evs]
    seed_end = max(e.finished_at.timestamp() for e in evs if e.candidate_id == archive.run_by_id(run.id).seed_id)
    last_start = max(s for s, _ in spans)
    calls = archive.llm_calls(run.id)
    result = {"lookahead": lookahead, "evaluations": len(evs), "calls": len(calls), "wall": wall,
              "idle": 1 - utilisation(spans, args.slots, seed_end, last_start),
              "latency": sum(c.latency_s for c in calls) / max(1, len(calls))}
    archive.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--budget", "-B", type=float, default=2.0, help="seconds per evaluation [2]")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--lookahead", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    header("Slot idle share with LLM latency = B/2 (target < 5 %)")
    rows = []
    with FakeLLMServer(latency=args.budget / 2) as server, tempfile.TemporaryDirectory() as tmp:
        for lookahead in args.lookahead:
            r = one_run(server, args, lookahead, Path(tmp))
            rows.append([args.slots, f"{args.budget:g}", lookahead, r["evaluations"], r["calls"],
                         f"{r['latency']:.2f}", f"{r['wall']:.1f}", f"{100 * r['idle']:.1f}"])
    table(["slots", "B s", "lookahead", "evaluations", "LLM calls", "mean call s", "wall s", "slot idle % (steady)"], rows)
    print("steady: from the seed's decision to the last evaluation start (the seed phase and the final drain, "
          "where no proposal can help, are excluded).")


if __name__ == "__main__":
    main()
