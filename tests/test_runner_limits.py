"""The runner's limits against hostile and slow candidates (issue 9, items 2, 3, 13, 18, 19): parsing
that never raises, a summary that cannot write the harness's columns, phase-aware timeouts that say
which phase overran, over_budget on the harness's own clock with a slack sized from what the
harness saw, and a watchdog that kills candidates whose evo died (and a pid file that cannot aim the
resume's orphan kill elsewhere)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from evo.storage import COMPLETE, RUNNING, Archive
from evo.launch.logs import SUMMARY_KEYS, budget_overrun, classify, parse_curve, parse_summary, training_slack
from evo.launch.apparatus import load, seed_for
from evo.launch.runner import HARNESS_SUFFIX, Limits, Phases, Slot, file_hash, kill_orphan, run_evaluation

from conftest import PREPARE as REAL_PREPARE, SEED_TRAIN, wait_until

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = ROOT / "tests" / "fixtures" / "surrogate"
PREPARE = SURROGATE / "prepare.py"
GOOD = (SURROGATE / "train.py").read_text()
SUMMARY_BLOCK = GOOD[GOOD.index('print("---")'):]


def evaluate(tmp_path: Path, code: str, limits: Limits, seed: int = 42):
    return run_evaluation(code=code, workdir=tmp_path / "work", prepare_src=PREPARE, locked_hash=file_hash(PREPARE),
                          slot=Slot("cpu", {"CUDA_VISIBLE_DEVICES": ""}), seed=seed, limits=limits, preset="smoke")


def candidate(body: str) -> str:
    """A train.py (no torch) that runs `body`, then scores itself and prints the summary as the
    surrogate does."""
    return ("import time\nfrom prepare import evaluate_bpb\nX1 = X2 = X3 = X4 = 1.0\nNOISE = 0.001\nt0 = time.time()\n"
            + body + "\nval_bpb = evaluate_bpb({'X1': X1, 'X2': X2, 'X3': X3, 'X4': X4}, NOISE)\n" + SUMMARY_BLOCK)


def progress(step: int, elapsed: float, loss: float = 2.0) -> str:
    return f"step {step:05d} | elapsed: {elapsed:.1f}s | loss: {loss:.6f}"


# ----- item 2: parsing never raises on candidate output ---------------------------------------

HOSTILE_LINES = [
    "step 00004 | elapsed: 0.4s | loss: -inf",
    "step 00004 | elapsed: 0.4s | loss: nan",
    "step 00004 | elapsed: 0.4s | loss: inf",
    "step 00004 | elapsed: 0.4s | loss: -",
    "step 00004 | elapsed: 0.4s | loss: e",
    "step nan | elapsed: 0.4s | loss: 1.0",
    "step 00004 | elapsed: nans | loss: 1.0",
    "step 00004 | elapsed: .s | loss: 1.0",
    "step 00004 | elapsed: 1.2.3s | loss: 1.0",
    "step 00004 | elapsed: -5.0s | loss: 1.0",
    "step 00004 | loss: 1.0 | remaining: -s",
    "step 00004 | loss: 1.0 | remaining: infs",
    "step 99999999999999999999999999 | elapsed: 0.4s | loss: 1.0",
    "step 00004 | elapsed: 0.4s | loss: 1e999",
    "step " + "1" * 5000 + " | elapsed: 0.4s | loss: 1.0",
    "step 00004 | elapsed: " + "9" * 5000 + "s | loss: 1.0",
]


@pytest.mark.parametrize("line", HOSTILE_LINES, ids=[line[:48] for line in HOSTILE_LINES])
def test_parse_curve_skips_an_unusable_progress_line(line: str) -> None:
    text = "\n".join([progress(1, 0.1, 3.0), line, progress(2, 0.2, 2.5)])
    assert parse_curve(text, time_budget=8) == [(1, 0.1, 3.0), (2, 0.2, 2.5)]


def test_number_formats_still_parse() -> None:
    text = ("step 00001 | elapsed: 1.5s | loss: 3.25e+00\nstep 00002 | elapsed: 2s | loss: -0.5\n"
            "step 00003 | elapsed: 3.s | loss: .5\n\rstep 00004 | loss: 1.000000 | remaining: 4s  ")
    assert parse_curve(text, time_budget=8) == [(1, 1.5, 3.25), (2, 2.0, -0.5), (3, 3.0, 0.5), (4, 4.0, 1.0)]


def test_candidate_printing_hostile_progress_lines_completes(tmp_path: Path) -> None:
    lines = "\n".join(f"print({line!r})" for line in HOSTILE_LINES)
    code = candidate(f"print({progress(1, 0.1, 3.0)!r})\n{lines}\nprint({progress(2, 0.2, 2.0)!r})")
    result = evaluate(tmp_path, code, Limits(time_budget=2, startup_allowance=60, eval_allowance=60))
    assert result.outcome.state == "COMPLETE", result.outcome
    assert result.curve == [(1, 0.1, 3.0), (2, 0.2, 2.0)]


# ----- item 3: the summary cannot write the harness's columns -------------------------------------

FORGED = "seed:             7\nid:               999\nwall_seconds:     12345.0\nharness_seconds:  0\nstate:            1\n"


def test_parse_summary_keeps_only_the_summary_keys() -> None:
    text = "---\n" + "".join(f"{key}: 1\n" for key in SUMMARY_KEYS) + FORGED
    assert set(parse_summary(text)) == set(SUMMARY_KEYS)


def test_hostile_summary_cannot_set_the_evaluation_row(tmp_path: Path) -> None:
    forged = "".join(f"print({line!r})\n" for line in FORGED.splitlines())
    code = GOOD.replace('print("depth:            1")', 'print("depth:            1")\n' + forged)
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    run = archive.create_run("hostile", {})
    cand = archive.add_candidate(run.id, code=code, operator="seed", evaluation_seeds=[42])
    ev = archive.evaluations(run.id, cand.id)[0]
    archive.start_evaluation(ev.id, "cpu", str(tmp_path / "work"))

    result = evaluate(tmp_path, code, Limits(time_budget=2, startup_allowance=60, eval_allowance=60))
    assert result.outcome.state == "COMPLETE", result.outcome
    o = result.outcome
    archive.finish_evaluation(ev.id, state=o.state, fail_reason=o.fail_reason, detail=o.detail, metrics=o.summary,
                              curve=result.curve, returncode=result.returncode, wall_seconds=result.wall_seconds,
                              harness_seconds=result.harness_seconds, log_tail=result.log_tail)
    rows = archive.evaluations(run.id)
    assert [r.id for r in rows] == [ev.id]
    row = rows[0]
    assert (row.seed, row.state, row.replicate) == (42, COMPLETE, 0)
    assert (row.wall_seconds, row.harness_seconds) == (result.wall_seconds, result.harness_seconds)
    assert row.val_bpb == o.summary["val_bpb"] and row.num_steps == 3


def test_finish_evaluation_keeps_harness_columns_even_if_handed_them(tmp_path: Path) -> None:
    """Defence in depth: the archive writes only summary metrics, whatever the dict holds, and a
    whole-number metric that is not a storable integer becomes empty instead of an error."""
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    run = archive.create_run("hostile", {})
    cand = archive.add_candidate(run.id, code="x = 1\n", operator="seed", evaluation_seeds=[42])
    ev = archive.evaluations(run.id, cand.id)[0]
    archive.start_evaluation(ev.id, "cpu", str(tmp_path))
    archive.finish_evaluation(ev.id, state=COMPLETE, fail_reason=None, detail="", curve=[], returncode=0,
                              wall_seconds=5.0, harness_seconds=0.5, log_tail="",
                              metrics={"val_bpb": 1.0, "seed": 7, "id": 999, "wall_seconds": 0.1, "state": 1,
                                       "run_id": 99, "num_steps": float("inf"), "depth": 1e30})
    row = archive.evaluations(run.id)[0]
    assert (row.id, row.seed, row.state, row.run_id, row.wall_seconds) == (ev.id, 42, COMPLETE, run.id, 5.0)
    assert row.val_bpb == 1.0 and row.num_steps is None and row.depth is None


# ----- item 18: each phase has its own limit, and the message says which one overran ----------------

TINY = Limits(time_budget=2, startup_allowance=60, eval_allowance=1, kill_grace=1, run_name="night")


def test_evaluation_overrun_names_the_phase_and_the_flag(tmp_path: Path) -> None:
    lines = "".join(f"print({progress(step, 0.5 * step)!r})\n" for step in range(1, 5))  # elapsed reaches 2.0 s
    code = f"import time\ntime.sleep(0.5)\n{lines}time.sleep(600)\n"
    outcome = evaluate(tmp_path, code, TINY).outcome
    assert (outcome.state, outcome.fail_reason) == ("FAIL", "timeout")
    assert outcome.detail == ("training finished at 2.0 s; the final evaluation did not finish within --eval-allowance "
                              "1 s; raise it with `evo run --resume --name night --eval-allowance 30`")


def test_startup_overrun_names_the_phase_and_the_flag(tmp_path: Path) -> None:
    limits = Limits(time_budget=2, startup_allowance=1, eval_allowance=60, kill_grace=1, run_name="night")
    outcome = evaluate(tmp_path, "import time\ntime.sleep(600)\n", limits).outcome
    assert (outcome.state, outcome.fail_reason) == ("FAIL", "timeout")
    assert outcome.detail.startswith("training had not started after the --startup-allowance of 1 s: "
                                     "the candidate printed no progress line")
    assert outcome.detail.endswith("raise it with `evo run --resume --name night --startup-allowance 30`")


def test_warm_up_lines_count_as_startup(tmp_path: Path) -> None:
    """Untimed steps (elapsed 0: torch.compile's warm-up on CUDA) are start-up, not training, and
    the start-up allowance still ends a candidate that never gets past them."""
    limits = Limits(time_budget=200, startup_allowance=8, eval_allowance=60, kill_grace=1, run_name="night")
    assert limits.warmup_window > limits.startup_allowance  # so the start-up allowance ends it first
    code = f"import time\nwhile True:\n    print({progress(0, 0.0)!r})\n    time.sleep(0.1)\n"
    outcome = evaluate(tmp_path, code, limits).outcome
    assert outcome.fail_reason == "timeout" and "printed only warm-up progress lines" in outcome.detail


def test_training_past_its_window_is_stopped(tmp_path: Path) -> None:
    """A candidate whose clock runs slower than the harness's keeps printing progress lines after
    its budget and slack have passed by the harness's clock: it is stopped as a training overrun."""
    code = ("import time\nstep = 0\nwhile True:\n    step += 1\n"
            "    print(f'step {step:05d} | elapsed: {0.01 * step:.2f}s | loss: 1.0')\n    time.sleep(0.1)\n")
    outcome = evaluate(tmp_path, code, TINY).outcome
    assert outcome.fail_reason == "timeout"
    assert outcome.detail.startswith("still training ") and "past the 2 s budget" in outcome.detail


def test_no_line_reaching_the_budget_counts_evaluation_from_the_window(tmp_path: Path) -> None:
    code = f"import time\nprint({progress(1, 0.3)!r})\ntime.sleep(600)\n"
    outcome = evaluate(tmp_path, code, TINY).outcome
    assert outcome.fail_reason == "timeout"
    assert outcome.detail.startswith("no progress line reached the 2 s budget (the latest said elapsed 0.3 s)")
    assert "--eval-allowance 30`" in outcome.detail


def test_phases_deadlines_on_the_harness_clock() -> None:
    """The phase logic alone, on a made-up clock: start-up until the harness sees the first timed
    step (the elapsed it reports is not trusted), then the budget and slack, then the evaluation
    allowance from the line that reported the budget reached."""
    limits = Limits(time_budget=10, startup_allowance=5, eval_allowance=3, run_name="n")
    phases = Phases(limits, started=100.0)
    phases.feed("importing...\n" + progress(0, 0.0) + "\n", 103.0)   # a warm-up step
    assert phases.overrun(104.9) is None and phases.training_start is None
    phases.feed(progress(1, 1.0) + "\n" + progress(2, 2.0)[:12], 104.5)  # the second line is not ended yet
    assert phases.training_start == 104.5 and phases.overrun(106) is None
    phases.feed(progress(2, 2.0)[12:] + "\n", 105.5)
    for step in range(3, 11):
        phases.feed(progress(step, float(step)) + "\n", 103.5 + step)  # one line a second
    assert phases.training_end == 113.5 and phases.training_wall == pytest.approx(112.5 - 104.5)
    assert phases.slack == 2.0  # the base slack: lines a second apart, x2
    assert phases.overrun(116.4) is None
    assert phases.overrun(116.6).startswith("training finished at 10.0 s; the final evaluation did not finish within "
                                            "--eval-allowance 3 s")
    late = Phases(limits, started=100.0)
    assert late.overrun(105.1).startswith("training had not started after the --startup-allowance of 5 s")


def test_allowances_change_on_resume(tmp_path: Path) -> None:
    env = {**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"}
    base = [sys.executable, "-m", "evo", "run", "--name", "r", "--prepare", str(PREPARE), "--seed-train",
            str(SURROGATE / "train.py"), "--preset", "smoke", "--operator", "tweak", "--max-candidates", "1",
            "--replicates", "2"]
    first = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    resumed = subprocess.run(base + ["--resume", "--startup-allowance", "66", "--eval-allowance", "77"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    archive = Archive(env["EVO_STORAGE"], writer=False)
    config = json.loads(archive.find_run("r").config)
    assert (config["startup_allowance"], config["eval_allowance"]) == (66, 77)


# ----- item 19: a slow last step is not cheating ------------------------------------------------

def _summary(trained: float, steps: int) -> str:
    return ("---\nval_bpb: 1.0\n" + f"training_seconds: {trained}\n" + "total_seconds: 20\npeak_vram_mb: 0\n"
            "mfu_percent: 0\ntotal_tokens_M: 0\n" + f"num_steps: {steps}\n" + "num_params_M: 0\ndepth: 1\n")


def _classify(output: str, training_wall: float | None = None, slack: float = 2):
    return classify(0, output, timed_out=None, interrupted=False, time_budget=8, budget_slack=slack, scored={"val_bpb": 1.0},
                    prepare_changed=False, training_wall=training_wall)


def test_one_slow_last_step_under_load_is_accepted() -> None:
    """The smoke run of the issue: steps of 0.4 s, then a last step of 3 s on an 8 s budget, which
    the harness saw as the gap before the last line."""
    steps = [progress(i, 0.4 * i) for i in range(1, 20)] + [progress(20, 7.6 + 3.0)]
    slack = training_slack([0.4] * 18 + [3.0], 8, 2)
    outcome = _classify("\n".join(steps) + "\n" + _summary(10.6, 20), training_wall=10.3, slack=slack)
    assert outcome.state == "COMPLETE", outcome
    assert _classify("\n".join(steps) + "\n" + _summary(10.6, 20)).fail_reason == "over_budget"  # unseen, it is not


def test_clearly_past_the_budget_is_over_budget_not_invalid() -> None:
    steps = [progress(i, 0.4 * i) for i in range(1, 41)]  # kept training for 16 s in 0.4 s steps
    outcome = _classify("\n".join(steps) + "\n" + _summary(16.0, 40))
    assert (outcome.state, outcome.fail_reason) == ("FAIL", "over_budget")
    assert outcome.detail.startswith("trained 16.0 s by its own clock, past the 8 s budget and its 2.0 s of slack")


def test_harness_clock_catches_a_candidate_clock_that_runs_slow() -> None:
    steps = [progress(i, 0.4 * i) for i in range(1, 21)]
    outcome = _classify("\n".join(steps) + "\n" + _summary(8.0, 20), training_wall=14.0)
    assert outcome.fail_reason == "over_budget" and outcome.detail.startswith("the harness clock saw 14.0 s")
    assert _classify("\n".join(steps) + "\n" + _summary(8.0, 20), training_wall=9.0).state == "COMPLETE"


def test_slack_follows_the_slowest_recent_interval_the_harness_saw_within_bounds() -> None:
    quick = [0.2] * 30
    assert training_slack(quick, 8, 2) == 2  # the base slack
    assert training_slack(quick + [1.6], 8, 2) == pytest.approx(2 * 1.6)
    assert training_slack(quick + [100.0], 8, 2) == 4  # a few seconds at most on a seconds-long test budget
    assert training_slack(quick + [100.0], 300, 30) == 45  # and 15 % of a real one
    assert training_slack([], 300, 30) == 30


def test_a_slow_last_step_passes_the_real_runner(tmp_path: Path) -> None:
    """The same through a real candidate: quick steps, then a last step of 2.5 s on a 2 s budget
    that its summary reports as 4.4 s of training; the base slack alone would call it over_budget."""
    code = candidate("step = 0\nwhile time.time() - t0 < 1.9:\n    step += 1\n"
                     "    print(f'step {step:05d} | elapsed: {time.time() - t0:.1f}s | loss: 2.0')\n    time.sleep(0.1)\n"
                     "time.sleep(2.5)\ntrained = time.time() - t0\n"
                     "print(f'step {step + 1:05d} | elapsed: {trained:.1f}s | loss: 2.0')\n")
    code = code.replace('print("training_seconds: 0.3")', 'print(f"training_seconds: {trained:.1f}")')
    limits = Limits(time_budget=2, startup_allowance=60, eval_allowance=60)
    assert 2 + limits.budget_slack < 4.4
    outcome = evaluate(tmp_path, code, limits).outcome
    assert outcome.state == "COMPLETE", outcome


# ----- the harness's clock bounds training, whatever a candidate prints ---------------------------

LOOSE = Limits(time_budget=2, startup_allowance=60, eval_allowance=60, kill_grace=1, run_name="night")


def test_warm_up_lines_cannot_buy_untimed_training(tmp_path: Path) -> None:
    """(a) 15 s of training reported as warm-up (elapsed 0), then a quick honest-looking 2 s: the
    harness's clock starts at the end of the warm-up window and stops it."""
    code = candidate("while time.time() - t0 < 15:\n    print('step 00000 | elapsed: 0.0s | loss: 2.0')\n"
                     "    time.sleep(0.1)\n" + "".join(f"print({progress(i, 0.5 * i)!r})\n" for i in range(1, 5)))
    outcome = evaluate(tmp_path, code, LOOSE).outcome
    assert (outcome.state, outcome.fail_reason) == ("FAIL", "timeout"), outcome
    assert outcome.detail.startswith("still training ")
    assert "2 s after its first warm-up progress line (elapsed 0), the longest warm-up may take" in outcome.detail


def test_a_tiny_first_elapsed_after_long_untimed_training_is_caught(tmp_path: Path) -> None:
    """(b) One warm-up line, 12 s of training without a line, then a first timed line saying elapsed
    0.1 s: the harness does not start its clock from the reported elapsed."""
    code = candidate(f"print({progress(0, 0.0)!r})\ntime.sleep(12)\n"
                     + "".join(f"print({progress(i, 0.1 + 0.5 * i)!r})\n" for i in range(4)))
    outcome = evaluate(tmp_path, code, LOOSE).outcome
    # Stopped while it runs, or, when it exits between two polls, judged on the harness's clock.
    assert (outcome.state, outcome.fail_reason) in {("FAIL", "timeout"), ("FAIL", "over_budget")}, outcome
    assert "past the 2 s budget" in outcome.detail


def test_warm_up_window_starts_the_clock_whatever_the_first_timed_line_says() -> None:
    """(b) on a made-up clock: the window ends 2 s after the first warm-up line."""
    phases = Phases(Limits(time_budget=10, startup_allowance=60, eval_allowance=30), started=100.0)
    phases.feed(progress(0, 0.0) + "\n", 101.0)
    phases.feed(progress(0, 0.0) + "\n", 102.9)
    assert phases.overrun(102.9) is None and phases.training_start is None
    phases.feed(progress(1, 0.1) + "\n", 110.0)
    assert (phases.training_start, phases.clock_from_warmup) == (103.0, True)
    assert phases.training_wall == 0.0 and phases.overrun(110.0) is None
    phases.feed(progress(2, 0.2) + "\n", 121.0)
    phases.feed(progress(3, 0.3) + "\n", 121.2)  # written after 121.0: past the window (103 + 10 + 4 s of slack)
    assert phases.overrun(121.2).startswith("still training 18 s after the harness's training clock started")


def test_faked_step_times_do_not_widen_the_slack() -> None:
    """(c) Progress lines claiming 100 s steps, seen 0.2 s apart: the slack is the base slack (the
    old rule, from printed step times, gave half the budget); and lines truly far apart give no
    more than the cap."""
    limits = Limits(time_budget=300, startup_allowance=60, eval_allowance=60)
    phases = Phases(limits, started=0.0)
    for step in range(1, 12):
        phases.feed(progress(step, 100.0 * step) + "\n", 10 + 0.2 * step)
    assert phases.slack == limits.budget_slack == 30
    slow = Phases(limits, started=0.0)
    for step in range(1, 4):
        slow.feed(progress(step, 0.1 * step) + "\n", 100.0 * step)
    assert slow.slack == 45  # 15 % of the budget, not 2 x 100 s


def test_lines_after_the_budget_reached_are_still_watched(tmp_path: Path) -> None:
    """(d) A line saying the budget is reached, then 12 s more of printed training: stopped by the
    harness's clock rather than waved through into the evaluation allowance."""
    code = candidate(f"print({progress(1, 2.0)!r})\n" + "while time.time() - t0 < 12:\n"
                     "    print('step 00002 | elapsed: 2.0s | loss: 1.0')\n    time.sleep(0.1)\n")
    outcome = evaluate(tmp_path, code, LOOSE).outcome
    assert (outcome.state, outcome.fail_reason) == ("FAIL", "timeout"), outcome
    assert outcome.detail.startswith("still training ") and "past the 2 s budget" in outcome.detail


def test_silent_training_after_the_budget_reached_is_over_budget(tmp_path: Path) -> None:
    """(d) Lines up to the budget, then 10 s of training without a line before the final
    evaluation: the hand-over of the model says when it began, and the harness counts the gap."""
    code = candidate("".join(f"print({progress(i, 0.5 * i)!r})\n" for i in range(1, 5)) + "time.sleep(10)\n")
    outcome = evaluate(tmp_path, code, LOOSE).outcome
    assert (outcome.state, outcome.fail_reason) == ("FAIL", "over_budget"), outcome
    assert outcome.detail.startswith("the harness clock saw ") and "to the hand-over of the model" in outcome.detail


def test_the_hand_over_ends_the_training_wall() -> None:
    """(d) on a made-up clock: the hand-over file seen at 120.0 (not there at 119.8) began after 119.8."""
    limits = Limits(time_budget=10, startup_allowance=5, eval_allowance=30)
    phases = Phases(limits, started=100.0)
    phases.feed(progress(1, 1.0) + "\n" + progress(2, 10.0) + "\n", 101.0)
    phases.feed("", 119.8)
    assert phases.training_wall == 0.0
    phases.feed("", 120.0, handed_over=True)
    assert phases.training_wall == pytest.approx(119.8 - 101.0)
    assert budget_overrun(10.0, phases.training_wall, 10, phases.slack).startswith("the harness clock saw 18.8 s")


@pytest.mark.slow
@pytest.mark.parametrize("train", [SEED_TRAIN, ROOT / "tests" / "fixtures" / "autoresearch_style_train.py"],
                         ids=["seed_train", "autoresearch_style"])
def test_honest_candidates_complete_under_the_harness_clock(tmp_path: Path, smoke_cache: Path, train: Path) -> None:
    """The rules above leave honest training alone: our seed (one untimed step) and autoresearch's
    style (`remaining:` lines, rounded, so its first ones say elapsed 0) finish COMPLETE on the
    smoke preset with its default allowances, through the real runner and prepare.py."""
    startup, evaluation = load(REAL_PREPARE, "smoke").allowances
    result = run_evaluation(code=seed_for(REAL_PREPARE, "smoke", train.read_text(), str(train)), workdir=tmp_path / "work", prepare_src=REAL_PREPARE,
                            locked_hash=file_hash(REAL_PREPARE), seed=1, preset="smoke",
                            slot=Slot("cpu", {"CUDA_VISIBLE_DEVICES": "", "EVO_CACHE_DIR": str(smoke_cache)}),
                            limits=Limits(8, startup, evaluation))
    assert result.outcome.state == "COMPLETE", (result.outcome, result.log_tail[-2000:])


# ----- item 13: candidates die with their evo ----------------------------------------------------

def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _run_one_seed(tmp_path: Path, seed: Path, name: str) -> tuple[subprocess.Popen, str]:
    """`evo run` of `seed` alone (one evaluation), in the background; the process and its archive URL."""
    db = f"sqlite:///{tmp_path}/archive/evo.db"
    proc = subprocess.Popen([sys.executable, "-m", "evo", "run", "--name", name, "--prepare", str(PREPARE),
                             "--seed-train", str(seed), "--preset", "smoke", "--operator", "tweak",
                             "--max-candidates", "1", "--replicates", "1", "--temperature", "0.001"],
                            cwd=tmp_path, env={**os.environ, "EVO_STORAGE": db},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, db


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_candidates_die_when_evo_is_killed(tmp_path: Path) -> None:
    """kill -9 of `evo run` while a hostile candidate trains: one that ignores SIGTERM and started a
    child that ignores it too. The whole process group goes, without anyone resuming the run."""
    seed = tmp_path / "stubborn_train.py"
    seed.write_text(
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "open('child.pid', 'w').write(str(child.pid))\n"
        "time.sleep(600)\n")
    proc, db = _run_one_seed(tmp_path, seed, "w")
    pgid = None
    try:
        def started() -> Path | None:
            archive = Archive(db, writer=False)
            try:
                evs = archive.evaluations(archive.find_run("w").id)
            finally:
                archive.close()
            workdir = Path(evs[0].workdir) if evs and evs[0].state == RUNNING and evs[0].workdir else None
            return workdir if workdir and (workdir / "child.pid").read_text() and (workdir / "pid").read_text() else None

        workdir = wait_until(started, "the candidate and its child to be running")
        pgid, child = int((workdir / "pid").read_text()), int((workdir / "child.pid").read_text())
        # the watchdog, the sandbox (or the candidate) and the child: inside a sandbox the pid the
        # candidate wrote is its namespace's, so count the group rather than look for it
        assert len(_group_members(pgid)) >= 3 and child
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        wait_until(lambda: not _group_members(pgid), "the candidate's process group to die with evo", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pgid is not None and _group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)  # what a failed check left behind


def _scorer_processes(harness: Path) -> dict[int, str]:
    """pid -> state of the processes of the evaluation process waiting for `harness`'s hand-over."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if "evo.launch.evaluate" in cmd and str(harness) in cmd and state != "Z":
            found[int(stat.parent.name)] = state
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_the_paused_evaluation_process_dies_with_evo(tmp_path: Path) -> None:
    """While the training clock runs the waiting evaluation process is stopped (SIGSTOP); kill -9 of
    `evo run` then must not leave it stopped for good: its watchdog stays awake and kills it."""
    seed = tmp_path / "sleepy_train.py"
    seed.write_text("import time\nprint('step 00001 | elapsed: 0.5s | loss: 3.000000', flush=True)\ntime.sleep(600)\n")
    proc, db = _run_one_seed(tmp_path, seed, "p")
    harness = None
    try:
        def paused() -> Path | None:
            archive = Archive(db, writer=False)
            try:
                evs = archive.evaluations(archive.find_run("p").id)
            finally:
                archive.close()
            if not evs or not evs[0].workdir:
                return None
            folder = Path(evs[0].workdir + HARNESS_SUFFIX)
            states = _scorer_processes(folder)
            return folder if states and "T" in states.values() else None

        harness = wait_until(paused, "the evaluation process to be stopped while the candidate trains")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        wait_until(lambda: not _scorer_processes(harness), "the stopped evaluation process to die with evo", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _scorer_processes(harness) if harness else {}:
            os.kill(pid, signal.SIGKILL)  # what a failed check left behind


def test_a_candidate_killed_by_a_signal_is_reported_as_such(tmp_path: Path) -> None:
    """The watchdog passes the candidate's end through: killed by SIGKILL reads as -9, not as the
    watchdog's own status."""
    result = evaluate(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
                      Limits(time_budget=2, startup_allowance=60, eval_allowance=60))
    assert result.returncode == -signal.SIGKILL and result.outcome.fail_reason == "crash"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_pid_file_still_names_the_candidates_group(tmp_path: Path) -> None:
    """Under the watchdog the pid file holds the group that a resume's kill_orphan kills: the
    watchdog, the candidate and what the candidate started."""
    code = ("import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "open('started', 'w').write('1')\ntime.sleep(600)\n")
    results = []
    thread = threading.Thread(target=lambda: results.append(evaluate(tmp_path, code, Limits(2, 600, 600))))
    thread.start()
    work = tmp_path / "work"
    wait_until(lambda: (work / "started").exists() and (work / "pid").read_text(), "the candidate to start")
    pgid = int((work / "pid").read_text())
    assert len(_group_members(pgid)) >= 3
    assert kill_orphan(work)
    thread.join(timeout=120)
    assert results and results[0].outcome.state == "FAIL" and not _group_members(pgid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="checks process groups in /proc")
def test_a_rewritten_pid_file_cannot_aim_the_orphan_kill(tmp_path: Path) -> None:
    """The pid file lies in the candidate's folder: rewritten to 0 (killpg(0) is the caller's own
    group), 1, a negative number, evo's own group, or another live process's group (one of them
    even in the candidate's folder), a resumed evo's kill_orphan kills none of them."""
    work = tmp_path / "work"
    work.mkdir()
    bystanders = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], cwd=cwd,
                                   start_new_session=True) for cwd in (tmp_path, work)]
    try:
        for pid in ("0", "1", "-1", str(-os.getpgrp()), str(os.getpgrp()), str(os.getpid()),
                    *(str(b.pid) for b in bystanders)):
            (work / "pid").write_text(pid)
            assert not kill_orphan(work), pid
        assert [b.poll() for b in bystanders] == [None, None]
    finally:
        for b in bystanders:
            b.kill()
            b.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="checks process groups in /proc")
def test_a_candidate_aiming_the_orphan_kill_at_evo_is_ignored(tmp_path: Path) -> None:
    """The same from a running candidate: it finds evo's process group and writes it into the pid
    file; kill_orphan leaves evo alone (this test is evo here), and the run is stopped as usual."""
    code = ("import os, time\n"
            "evo = int(open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1].split()[1])\n"
            "open('pid', 'w').write(str(os.getpgid(evo)))\nopen('started', 'w').write('1')\ntime.sleep(600)\n")
    stop = threading.Event()
    results = []
    work = tmp_path / "work"
    thread = threading.Thread(target=lambda: results.append(run_evaluation(
        code=code, workdir=work, prepare_src=PREPARE, locked_hash=file_hash(PREPARE), slot=Slot("cpu", {}), seed=1,
        limits=Limits(2, 600, 600, kill_grace=1), preset="smoke", stop=stop)))
    thread.start()
    try:
        wait_until(lambda: (work / "started").exists(), "the candidate to rewrite the pid file")
        assert (work / "pid").read_text() == str(os.getpgrp())
        assert not kill_orphan(work)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert results and results[0].outcome.fail_reason == "interrupted"
