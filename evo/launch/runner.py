"""The runner: one evaluation of one candidate, as a real subprocess on one slot.

Each evaluation gets its own folder holding the candidate as train.py beside a copy of the locked
prepare.py, whose hash is checked before and after. The process runs under `evo.launch.watchdog` in its
own process group with a scrubbed environment (an allowlist: no API keys or tokens reach candidate
code); the watchdog kills the group if evo dies. The runner reads the log as it grows and holds
each phase to its own limit (`Phases`): start-up, the training budget, the final evaluation. On an
overrun or interrupt the whole group gets SIGTERM, then SIGKILL, so children the candidate spawned
die with it (unless they left the group: see evo.launch.watchdog). Deciding what the output means is
`evo.launch.logs`' job.
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import json
import math
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

from evo.launch import logs

LOG_TAIL_LINES = 200
PID_FILE = "pid"
MAX_CURVE_POINTS = 500
POLL_SECONDS = 0.2
WATCHDOG = Path(__file__).with_name("watchdog.py")  # started by path; kill_orphan matches its last two parts

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
    startup_allowance: float    # until the first timed step: imports, data loading, compilation, warm-up steps
    eval_allowance: float       # from the end of training: the final evaluate_bpb and the summary
    kill_grace: float = 5.0     # SIGTERM to SIGKILL
    run_name: str = ""          # for the command that raises an allowance, in timeout messages

    @property
    def budget_slack(self) -> float:
        # The base slack; logs.training_slack widens it when the harness sees progress lines slowly.
        return max(2.0, 0.1 * self.time_budget)

    @property
    def warmup_window(self) -> float:
        """How long untimed warm-up steps (progress lines saying elapsed 0) may go on after the first
        progress line before the harness's training clock starts anyway. Compilation ends before
        the first step's line; what follows is about ten steps (seed_train.py, autoresearch) and
        perhaps a recompile, while longer would be training outside the budget. As long as the base
        slack, whose job is the same: a few steps' worth of the budget."""
        return self.budget_slack

    @property
    def hard_timeout(self) -> float:
        """The backstop over all phases (each phase's own limit normally ends an overrun first)."""
        return (self.startup_allowance + self.time_budget + logs.max_slack(self.time_budget, self.budget_slack)
                + self.eval_allowance)


@dataclass
class Phases:
    """Where a running candidate is, from its progress lines and the evaluator's records and when
    the harness saw them. The harness's clock bounds training: the elapsed seconds a candidate
    prints are information only. Pure: the runner feeds it what the log and the record gained and
    its own clock.

    - startup: until the first progress line reporting elapsed training seconds above 0 (imports,
      data loading, compilation and untimed warm-up steps, as autoresearch leaves them outside the
      budget), bounded by the startup allowance; warm-up lines (elapsed 0) only for the warm-up
      window after the first one, after which the training clock starts without a timed line;
    - training: the budget plus a slack sized from the intervals at which the harness saw progress
      lines (logs.training_slack), counted from when the harness saw the first timed line; a
      progress line written after that is an overrun, also after a line reporting the budget reached;
    - evaluation: the eval allowance, counted from the line reporting the budget reached (or from
      the end of the training window when no line does). Time between the last progress line and
      the start of the final evaluation (from the evaluator's signed record: when the harness saw
      it, less the seconds it says the evaluation took) counts as training.
    """

    limits: Limits
    started: float                                    # harness clock when the candidate started
    gaps: list[float] = field(default_factory=list)   # seconds between polls that brought progress lines in training
    first_line: float | None = None                   # when the first progress line of any kind was seen
    training_start: float | None = None               # the harness's training clock
    clock_from_warmup: bool = False                   # it started at the warm-up window's end, not at a timed line
    training_end: float | None = None                 # when the first line reporting the budget reached was seen
    last_line: tuple[float, float] | None = None      # (written no earlier than, elapsed) of the latest progress line
    evaluation_from: float | None = None              # the latest evaluation began no earlier than this
    _partial: str = ""                                # the log's last line, not yet ended
    _previous: float | None = None                    # the clock at the previous feed
    _line_seen: float | None = None                   # the clock at the previous feed that brought a training line

    def feed(self, text: str, now: float, evaluations: tuple[float, ...] = ()) -> None:
        """Take what the log gained since the previous feed, and the durations (seconds) of the
        evaluator records that appeared, all seen at `now`."""
        *lines, partial = re.split(r"[\r\n]", self._partial + text)
        self._partial = partial[-10_000:]  # a line without an end is not a progress line yet
        written_after = self.started if self._previous is None else self._previous
        self._previous = now
        for seconds in evaluations:
            # Seen now, so written after the previous feed: began no earlier than that, less its duration.
            self.evaluation_from = written_after - seconds
        points = logs.parse_curve("\n".join(lines), self.limits.time_budget)
        if points:
            if self.first_line is None:
                self.first_line = now
            self.last_line = (written_after, points[-1][1])
        self._start_clock(now)
        if self.training_start is None and any(elapsed > 0 for _, elapsed, _ in points):
            self.training_start = now  # when the harness saw it; the elapsed it reports is not trusted
        if self.training_start is None or not points:
            return
        if self._line_seen is not None:
            self.gaps = (self.gaps + [now - self._line_seen])[-logs.RECENT_GAPS:]
        self._line_seen = now
        if self.training_end is None and any(elapsed >= self.limits.time_budget for _, elapsed, _ in points):
            self.training_end = now

    def _start_clock(self, now: float) -> None:
        """Warm-up past the window is training, whatever the lines say."""
        if self.training_start is not None or self.first_line is None:
            return
        end = self.first_line + self.limits.warmup_window
        if now >= end:
            self.training_start = self._line_seen = end
            self.clock_from_warmup = True

    @property
    def slack(self) -> float:
        return logs.training_slack(self.gaps, self.limits.time_budget, self.limits.budget_slack)

    @property
    def training_wall(self) -> float | None:
        """Seconds of training by the harness's clock, from the start of its training clock to the
        latest progress line or the start of the latest evaluation, whichever is later; counted
        short (the poll's uncertainty is the candidate's benefit)."""
        ends = ([self.last_line[0]] if self.last_line else []) + ([] if self.evaluation_from is None
                                                                   else [self.evaluation_from])
        if self.training_start is None or not ends:
            return None
        return max(0.0, max(ends) - self.training_start)

    def overrun(self, now: float) -> str | None:
        """The sentence saying which phase ran past its limit at `now`, or None."""
        lim = self.limits
        run = lim.run_name or "RUN"
        self._start_clock(now)
        if self.training_start is None:
            if now - self.started <= lim.startup_allowance:
                return None
            seen = ("printed only warm-up progress lines (elapsed 0)" if self.first_line is not None else
                    "printed no progress line (`step N | elapsed: Xs | loss: L`)")
            return (f"training had not started after the --startup-allowance of {lim.startup_allowance:g} s: the candidate "
                    f"{seen}; imports, data loading and compilation took longer, or the candidate hangs; raise it with "
                    f"`evo run --resume --name {run} --startup-allowance {_more(lim.startup_allowance)}`")
        slack = self.slack
        window_end = self.training_start + lim.time_budget + slack
        latest = self.last_line[1] if self.last_line else 0.0
        if self.last_line is not None and self.last_line[0] > window_end:
            since = (f"{lim.warmup_window:g} s after its first warm-up progress line (elapsed 0), the longest warm-up "
                     f"may take" if self.clock_from_warmup else "at its first timed progress line")
            return (f"still training {now - self.training_start:.0f} s after the harness's training clock started "
                    f"({since}; its latest progress line says elapsed {latest:.1f} s), past the {lim.time_budget:g} s "
                    f"budget and {slack:.1f} s of slack by the harness's clock")
        if self.training_end is not None and now > self.training_end + lim.eval_allowance:
            return (f"training finished at {latest:.1f} s; the final evaluation did not finish within "
                    f"--eval-allowance {lim.eval_allowance:g} s; raise it with "
                    f"`evo run --resume --name {run} --eval-allowance {_more(lim.eval_allowance)}`")
        if self.training_end is None and now > window_end + lim.eval_allowance:
            return (f"no progress line reached the {lim.time_budget:g} s budget (the latest said elapsed "
                    f"{latest:.1f} s), and the candidate did not finish within --eval-allowance "
                    f"{lim.eval_allowance:g} s after its training window ({lim.time_budget:g} s + {slack:.1f} s slack) "
                    f"closed; raise it with `evo run --resume --name {run} --eval-allowance {_more(lim.eval_allowance)}`")
        if now - self.started > lim.hard_timeout:
            return f"killed at the hard cap of {lim.hard_timeout:.0f} s (start-up, budget, slack and evaluation together)"
        return None


def _more(seconds: float) -> int:
    """A suggested larger allowance: double, in whole half-minutes."""
    return 30 * max(1, math.ceil(2 * seconds / 30))


@dataclass
class EvalResult:
    outcome: logs.Outcome
    curve: list[tuple[int, float, float]]
    returncode: int | None
    wall_seconds: float
    harness_seconds: float
    log_tail: str


def detect_slots(gpus: str | None, slots: int | None, visible: int | None = None) -> list[Slot]:
    """`--gpus 0,1` pins one slot per listed device; by default every visible CUDA device; on a
    CPU one slot, or `--slots N`, with the cores shared out between them. `visible` is the number
    of GPUs (nvidia-smi's count when not given): --gpus may name only those."""
    n_cuda = _cuda_device_count() if visible is None else visible
    if gpus:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if not ids or not all(g.isdigit() for g in ids):
            raise ValueError(f"--gpus takes device numbers separated by commas, not {gpus!r}")
        if not n_cuda:
            raise ValueError(f"--gpus {gpus} names GPUs, but no GPU is visible here; leave out --gpus to run on the CPU.")
        missing = [g for g in ids if int(g) >= n_cuda]
        if missing:
            raise ValueError(f"--gpus names GPU {', '.join(missing)}, but only {n_cuda} GPU(s) are visible here "
                             f"(0 to {n_cuda - 1}).")
        return [Slot(f"gpu{g}", {"CUDA_VISIBLE_DEVICES": g}) for g in ids]
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


def signed_records(text: str, key: str) -> list[dict]:
    """The records the evaluator signed with this evaluation's key; forged lines are ignored."""
    records = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            payload = json.dumps(entry["record"], sort_keys=True)
            signature = hmac.new(key.encode(), payload.encode(), hashlib.sha256).hexdigest()
            if hmac.compare_digest(signature, entry["hmac"]):
                records.append(entry["record"])
        except (ValueError, KeyError, TypeError):
            continue
    return records


def read_records(path: Path, key: str) -> list[float]:
    """val_bpb values the evaluator signed with this evaluation's key."""
    if not path.exists():
        return []
    values = []
    for record in signed_records(path.read_text(errors="replace"), key):
        try:
            values.append(float(record["val_bpb"]))
        except (ValueError, KeyError, TypeError):
            continue
    return values


def _new_evaluations(path: Path, offset: int, key: str) -> tuple[tuple[float, ...], int]:
    """The durations (the evaluator's `seconds`) of signed records appended to `path` since
    `offset`, and the offset after the last complete line."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return (), offset
    complete = data[:data.rfind(b"\n") + 1]
    durations = []
    for record in signed_records(complete.decode(errors="replace"), key):
        seconds = record.get("seconds") if isinstance(record, dict) else None
        if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0:
            durations.append(float(seconds))
    return tuple(durations), offset + len(complete)


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
    shared box). Returns whether one was still alive. The pid file lies in the candidate's folder,
    so the candidate may have rewritten it: only a group led by evo's watchdog for this very folder
    is killed (checked in /proc; without /proc nothing is, and the watchdog's lifeline remains)."""
    try:
        pgid = int((workdir / PID_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not _is_watchdog_of(pgid, workdir):
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _is_watchdog_of(pid: int, workdir: Path) -> bool:
    """Whether `pid` is a live evo watchdog leading its own process group in `workdir`."""
    if pid <= 1 or pid in (os.getpid(), os.getpgrp()):
        return False
    proc = Path("/proc") / str(pid)
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        cwd = Path(os.readlink(proc / "cwd"))
    except (OSError, IndexError):
        return False
    return (stat[0] != "Z" and int(stat[2]) == pid and cwd == workdir.resolve()
            and any(Path(os.fsdecode(arg)).parts[-2:] == WATCHDOG.parts[-2:] for arg in argv))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _launch(python: str, workdir: Path, env: dict[str, str], log) -> tuple[subprocess.Popen, int]:
    """Start `python train.py` under evo.launch.watchdog as the leader of a new process group. Returns the
    process and the write end of the watchdog's lifeline: closing it, or evo dying, kills the group."""
    lifeline_read, lifeline = os.pipe()  # not inheritable: no other child of evo holds the lifeline open
    try:
        proc = subprocess.Popen([python, "-I", str(WATCHDOG), str(lifeline_read), python, "train.py"], cwd=workdir,
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, pass_fds=(lifeline_read,))
    except BaseException:
        os.close(lifeline)
        raise
    finally:
        os.close(lifeline_read)
    return proc, lifeline


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
    timed_out: str | None = None
    interrupted = False
    with open(log_path, "wb") as log, open(log_path, "rb") as reader:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        p0 = time.monotonic()
        phases = Phases(limits, p0)
        record_offset = 0
        proc, lifeline = _launch(python, workdir, env, log)
        try:
            (workdir / PID_FILE).write_text(str(proc.pid))  # lets a resumed run kill what a crash left behind
            while True:
                try:
                    proc.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                evaluations, record_offset = _new_evaluations(record, record_offset, key)
                phases.feed(decoder.decode(reader.read()), now, evaluations)
                if stop is not None and stop.is_set():
                    interrupted = True
                else:
                    timed_out = phases.overrun(now)
                if interrupted or timed_out:
                    kill_group(proc, limits.kill_grace)
                    break
            p1 = time.monotonic()
            evaluations, record_offset = _new_evaluations(record, record_offset, key)
            phases.feed(decoder.decode(reader.read(), final=True), p1, evaluations)
            # Children the candidate left behind die with it.
            if _group_alive(proc.pid):
                kill_group(proc, limits.kill_grace)
        finally:
            os.close(lifeline)  # whatever is still alive now, the watchdog kills (also when this thread fails)
    output = log_path.read_text(errors="replace")
    prepare_changed = not prepare.exists() or file_hash(prepare) != locked_hash or file_hash(prepare_src) != locked_hash
    outcome = logs.classify(proc.returncode, output, timed_out=timed_out, interrupted=interrupted,
                            time_budget=limits.time_budget, budget_slack=phases.slack,
                            recorded_bpb=read_records(record, key), prepare_changed=prepare_changed,
                            training_wall=phases.training_wall)
    curve = _downsample(logs.parse_curve(output, limits.time_budget))
    tail = "\n".join(logs.split_lines(output)[-LOG_TAIL_LINES:])
    wall = time.monotonic() - t0
    return EvalResult(outcome, curve, proc.returncode, wall, wall - (p1 - p0), tail)
