"""The runner against hostile and broken candidates, as real subprocesses."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from evo.launch.runner import Limits, Slot, detect_slots, file_hash, run_evaluation, scrub_env

from conftest import wait_until

FIXTURES = Path(__file__).parent / "fixtures" / "surrogate"
PREPARE = FIXTURES / "prepare.py"
GOOD = (FIXTURES / "train.py").read_text()
LIMITS = Limits(time_budget=2, startup_allowance=2, eval_allowance=1, kill_grace=1)


def evaluate(tmp_path: Path, code: str, limits: Limits = LIMITS, stop: threading.Event | None = None, seed: int = 42):
    return run_evaluation(code=code, workdir=tmp_path / "work", prepare_src=PREPARE, locked_hash=file_hash(PREPARE),
                          slot=Slot("cpu", {"CUDA_VISIBLE_DEVICES": ""}), seed=seed, limits=limits, preset="smoke",
                          stop=stop)


def test_good_candidate_completes_with_curve_and_tail(tmp_path: Path) -> None:
    result = evaluate(tmp_path, GOOD)
    assert result.outcome.state == "COMPLETE", result.outcome
    assert result.outcome.summary["val_bpb"] == pytest.approx(1.0 + 0.01 * sum(
        __import__("math").log(t) ** 2 for t in (2.0, 0.5, 4.0, 1.5)), abs=0.01)
    assert result.curve == [(1, 0.1, 3.0), (2, 0.2, 2.0), (3, 0.3, 1.0)]
    assert "val_bpb:" in result.log_tail


def test_crash_is_classified_with_its_error(tmp_path: Path) -> None:
    result = evaluate(tmp_path, GOOD.replace("t0 = time.time()", "t0 = time.time()\nraise ValueError('bad idea')"))
    assert (result.outcome.state, result.outcome.fail_reason) == ("FAIL", "crash")
    assert "ValueError: bad idea" in result.outcome.detail


def test_oom_is_classified(tmp_path: Path) -> None:
    code = GOOD.replace("t0 = time.time()", "raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')")
    assert evaluate(tmp_path, code).outcome.fail_reason == "oom"


def test_nan_exit_status_is_diverged(tmp_path: Path) -> None:
    diverged = GOOD.replace("t0 = time.time()", "import sys\nprint('FAIL: loss diverged (nan)')\nsys.exit(3)")
    assert evaluate(tmp_path, diverged).outcome.fail_reason == "nan"


def test_the_printed_val_bpb_is_ignored_and_the_harness_scores(tmp_path: Path) -> None:
    honest = evaluate(tmp_path / "honest", GOOD).outcome
    for i, printed in enumerate(("0.500000", "nan", "-1")):
        forged = GOOD.replace('print(f"val_bpb:          {val_bpb:.6f}")', f'print("val_bpb:          {printed}")')
        outcome = evaluate(tmp_path / str(i), forged).outcome
        assert outcome.state == "COMPLETE", outcome
        assert outcome.summary["val_bpb"] == honest.summary["val_bpb"]


def test_a_candidate_that_hands_nothing_over_is_invalid(tmp_path: Path) -> None:
    silent = GOOD.replace("val_bpb = evaluate_bpb(", "val_bpb = 0.5 or (")
    outcome = evaluate(tmp_path, silent).outcome
    assert (outcome.state, outcome.fail_reason) == ("FAIL", "invalid")
    assert "without handing its model to the harness" in outcome.detail


def test_training_past_the_budget_is_over_budget(tmp_path: Path) -> None:
    code = GOOD.replace('print("training_seconds: 0.3")', 'print("training_seconds: 9.0")')
    outcome = evaluate(tmp_path, code).outcome
    assert outcome.fail_reason == "over_budget" and "past the 2 s budget" in outcome.detail


def test_truncated_summary_is_invalid(tmp_path: Path) -> None:
    code = GOOD.replace('print("depth:            1")', "")
    outcome = evaluate(tmp_path, code).outcome
    assert outcome.fail_reason == "invalid" and "depth" in outcome.detail


def test_modifying_prepare_is_invalid(tmp_path: Path) -> None:
    code = GOOD.replace("t0 = time.time()", "open('prepare.py', 'a').write('\\n# tampered\\n')\nt0 = time.time()")
    outcome = evaluate(tmp_path, code).outcome
    assert (outcome.state, outcome.fail_reason) == ("FAIL", "invalid")
    assert "prepare.py" in outcome.detail
    assert file_hash(PREPARE) != file_hash(tmp_path / "work" / "prepare.py")


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    result = evaluate(tmp_path, code, Limits(time_budget=1, startup_allowance=5, eval_allowance=0.5, kill_grace=1))
    assert (result.outcome.state, result.outcome.fail_reason) == ("FAIL", "timeout")
    grandchild = int(pidfile.read_text())
    wait_until(lambda: not _alive(grandchild), "the candidate's child to die with it", timeout=30)


def test_sigterm_ignoring_candidate_is_killed(tmp_path: Path) -> None:
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n"
    result = evaluate(tmp_path, code, Limits(time_budget=1, startup_allowance=0, eval_allowance=0, kill_grace=0.5))
    assert result.outcome.fail_reason == "timeout"


def test_stop_event_interrupts(tmp_path: Path) -> None:
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    result = evaluate(tmp_path, "import time\ntime.sleep(600)\n", stop=stop)
    assert result.outcome.fail_reason == "interrupted"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("TORCH_SECRET_THING", "x")
    monkeypatch.setenv("RANDOM_VAR", "x")
    code = GOOD.replace("t0 = time.time()", "import os\nprint('ENV', sorted(os.environ))\nt0 = time.time()")
    result = evaluate(tmp_path, code)
    env_line = next(line for line in result.log_tail.splitlines() if line.startswith("ENV"))
    for leaked in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "TORCH_SECRET_THING", "RANDOM_VAR", "EVO_EVAL_KEY"):
        assert leaked not in env_line
    assert "EVO_SEED" in env_line and "CUDA_VISIBLE_DEVICES" in env_line


def test_scrub_env_allowlist() -> None:
    env = scrub_env({"PATH": "/bin", "GITHUB_TOKEN": "x", "LC_ALL": "C", "AWS_SECRET_ACCESS_KEY": "y"}, {"EVO_SEED": "1"})
    assert env == {"PATH": "/bin", "LC_ALL": "C", "EVO_SEED": "1"}


def test_slots() -> None:
    assert [s.name for s in detect_slots("0,2", None, visible=3)] == ["gpu0", "gpu2"]
    assert detect_slots("1", None, visible=2)[0].env["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(ValueError):
        detect_slots("a,b", None)
    cpu = detect_slots(None, 3)
    assert [s.name for s in cpu] == ["cpu0", "cpu1", "cpu2"]
