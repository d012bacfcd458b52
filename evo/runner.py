"""The runner: one evaluation of one candidate, as a real subprocess on one slot.

Each evaluation gets its own folder holding the candidate as train.py beside a copy of the locked
prepare.py, whose hash is checked before and after. The process runs in its own process group
with a scrubbed environment (an allowlist: no API keys or tokens reach candidate code) and a hard
timeout; on timeout or interrupt the whole group gets SIGTERM, then SIGKILL, so children the
candidate spawned die with it. Deciding what the output means is `evo.logs`' job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from evo import logs

LOG_TAIL_LINES = 200
PID_FILE = "pid"
MAX_CURVE_POINTS = 500

# Environment variables a candidate may see. Everything else is dropped, and so is anything that
# looks like a credential even when a prefix below would admit it.
_ENV_ALLOW = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SHELL", "TERM",
              "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH",
              "HF_ENDPOINT", "EVO_CACHE_DIR", "XDG_CACHE_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
_ENV_ALLOW_PREFIX = ("LC_", "NVIDIA_", "TORCH", "TRITON_", "NCCL_", "CUBLAS_", "PYTORCH_")
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


@dataclass(frozen=True)
class Slot:
    """One place an evaluation can run: a GPU, or the CPU."""
    name: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    time_budget: float          # the preset's TIME_BUDGET
    startup_allowance: float    # imports, data loading, compilation
    eval_allowance: float       # the final evaluate_bpb
    kill_grace: float = 5.0     # SIGTERM to SIGKILL

    @property
    def hard_timeout(self) -> float:
        return self.time_budget + self.startup_allowance + self.eval_allowance

    @property
    def budget_slack(self) -> float:
        # A training loop checks the clock after each step, so it may overrun by one step.
        return max(2.0, 0.1 * self.time_budget)


@dataclass
class EvalResult:
    outcome: logs.Outcome
    curve: list[tuple[int, float, float]]
    returncode: int | None
    wall_seconds: float
    harness_seconds: float
    log_tail: str


def detect_slots(gpus: str | None, slots: int | None) -> list[Slot]:
    """`--gpus 0,1` pins one slot per listed device; by default every visible CUDA device; on a
    CPU one slot, or `--slots N`, with the cores shared out between them."""
    if gpus:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if not ids or not all(g.isdigit() for g in ids):
            raise ValueError(f"--gpus takes device numbers separated by commas, not {gpus!r}")
        return [Slot(f"gpu{g}", {"CUDA_VISIBLE_DEVICES": g}) for g in ids]
    n_cuda = _cuda_device_count()
    if n_cuda and not slots:
        return [Slot(f"gpu{i}", {"CUDA_VISIBLE_DEVICES": str(i)}) for i in range(n_cuda)]
    n = slots or 1
    threads = str(max(1, (os.cpu_count() or 1) // n))
    return [Slot(f"cpu{i}" if n > 1 else "cpu", {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads})
            for i in range(n)]


def _cuda_device_count() -> int:
    # nvidia-smi rather than torch: initialising CUDA in the harness would hold memory on GPU 0.
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return 0
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def device_description(slots: list[Slot]) -> str:
    """What the candidates run on, in words, for the operator's prompt."""
    if any(s.name.startswith("gpu") for s in slots):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            out = []
        return f"{len(slots)} GPU slot(s): {out[0]}" if out else f"{len(slots)} GPU slot(s)"
    return f"CPU, {os.cpu_count()} cores shared by {len(slots)} slot(s)"


def scrub_env(environ: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items()
           if (k in _ENV_ALLOW or k.startswith(_ENV_ALLOW_PREFIX)) and not _SECRET.search(k)}
    env.update(extra)
    return env


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_records(path: Path, key: str) -> list[float]:
    """val_bpb values the evaluator signed with this evaluation's key; forged lines are ignored."""
    if not path.exists():
        return []
    values = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            payload = json.dumps(entry["record"], sort_keys=True)
            signature = hmac.new(key.encode(), payload.encode(), hashlib.sha256).hexdigest()
            if hmac.compare_digest(signature, entry["hmac"]):
                values.append(float(entry["record"]["val_bpb"]))
        except (ValueError, KeyError, TypeError):
            continue
    return values


def _downsample(curve: list[tuple[int, float, float]], n: int = MAX_CURVE_POINTS) -> list[tuple[int, float, float]]:
    if len(curve) <= n:
        return curve
    stride = len(curve) / n
    picked = [curve[int(i * stride)] for i in range(n - 1)]
    return picked + [curve[-1]]


def kill_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after `grace` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(proc.pid):
            return
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def kill_orphan(workdir: Path) -> bool:
    """Kill the process group of an evaluation whose harness died (kill -9, power loss on a
    shared box). Returns whether one was still alive."""
    try:
        pgid = int((workdir / PID_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not _group_alive(pgid):
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run_evaluation(*, code: str, workdir: Path, prepare_src: Path, locked_hash: str, slot: Slot, seed: int,
                   limits: Limits, preset: str, stop: threading.Event | None = None,
                   python: str = sys.executable) -> EvalResult:
    """Train and score one candidate in `workdir`. `stop` set means: kill it now (second Ctrl-C)."""
    t0 = time.monotonic()
    shutil.rmtree(workdir, ignore_errors=True)  # a re-queued evaluation starts clean
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "train.py").write_text(code)
    prepare = workdir / "prepare.py"
    shutil.copyfile(prepare_src, prepare)
    if file_hash(prepare) != locked_hash:
        raise RuntimeError(f"{prepare_src} changed since the run started; the apparatus is locked")
    record, key = workdir / "eval_record.jsonl", secrets.token_hex(16)
    record.unlink(missing_ok=True)
    env = scrub_env(dict(os.environ), {
        **slot.env, "EVO_PRESET": preset, "EVO_SEED": str(seed), "PYTHONUNBUFFERED": "1",
        "EVO_EVAL_RECORD": str(record), "EVO_EVAL_KEY": key, "PYTHONDONTWRITEBYTECODE": "1"})
    log_path = workdir / "run.log"
    timed_out = interrupted = False
    with open(log_path, "wb") as log:
        p0 = time.monotonic()
        proc = subprocess.Popen([python, "train.py"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        (workdir / PID_FILE).write_text(str(proc.pid))  # lets a resumed run kill what a crash left behind
        deadline = p0 + limits.hard_timeout
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if stop is not None and stop.is_set():
                interrupted = True
            elif time.monotonic() > deadline:
                timed_out = True
            if interrupted or timed_out:
                kill_group(proc, limits.kill_grace)
                break
        p1 = time.monotonic()
        # Children the candidate left behind die with it.
        if _group_alive(proc.pid):
            kill_group(proc, limits.kill_grace)
    output = log_path.read_text(errors="replace")
    prepare_changed = not prepare.exists() or file_hash(prepare) != locked_hash or file_hash(prepare_src) != locked_hash
    outcome = logs.classify(proc.returncode, output, timed_out=timed_out, interrupted=interrupted,
                            time_budget=limits.time_budget, budget_slack=limits.budget_slack,
                            recorded_bpb=read_records(record, key), prepare_changed=prepare_changed)
    curve = _downsample(logs.parse_curve(output, limits.time_budget))
    tail = "\n".join(logs.split_lines(output)[-LOG_TAIL_LINES:])
    wall = time.monotonic() - t0
    return EvalResult(outcome, curve, proc.returncode, wall, wall - (p1 - p0), tail)
