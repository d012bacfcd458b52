"""The runner: one evaluation of one candidate, as a real subprocess on one slot.

An evaluation is two processes. The training process runs the candidate as train.py beside a
copy of the locked prepare.py (hash checked before and after), under `evo.launch.watchdog` in its
own process group with a scrubbed environment (an allowlist: no API keys or tokens reach candidate
code); the watchdog kills the group if evo dies. Its evaluate_bpb hands the trained model over as a
file instead of scoring it. The evaluation process (`evo.launch.evaluate`) then scores that file
with only harness code, importing prepare.py from a folder beside the candidate's that only the
harness writes; the number it prints is the one archived, whatever the candidate printed.

The runner reads the training log as it grows and holds each phase to its own limit (`Phases`):
start-up, the training budget, the hand-over; and, once the seed has been measured, the whole
training process to the budget plus the seed's own start-up and hand-over time (`Limits.training_limit`).
On an overrun or interrupt the whole group gets SIGTERM, then SIGKILL, so children the candidate
spawned die with it. Deciding what the output means is `evo.launch.logs`' job.
"""

from __future__ import annotations

import codecs
import hashlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from evo.launch import logs
from evo.launch.sandbox import Sandbox, harness_paths, hidden_validation, wrap

LOG_TAIL_LINES = 200
PID_FILE = "pid"
MAX_CURVE_POINTS = 500
POLL_SECONDS = 0.2
WATCHDOG = Path(__file__).with_name("watchdog.py")  # started by path; kill_orphan matches its last two parts
HAND_OVER = "model.pt2"          # in the candidate's folder: what evaluate_bpb hands over
HAND_OVER_ENV = "EVO_HAND_OVER"  # prepare.py's name for it
HARNESS_SUFFIX = ".harness"      # beside the candidate's folder: the locked prepare.py and the evaluation's log
# In an evaluation's folder: its Inductor and Triton caches. An evaluation starts from a copy of an
# earlier one's (its own candidate's earlier replicate, else its parent's), so an unchanged model
# (a hyperparameter-only child) compiles nothing again, and a changed one compiles what changed.
COMPILE_CACHE = ".compile-cache"
COMPILE_CACHE_MAX_BYTES = 4 << 30   # an inherited cache larger than this is not copied (a disk-filling candidate)

# Environment variables a candidate may see. Everything else is dropped, and so is anything that
# looks like a credential even when a prefix below would admit it.
_ENV_ALLOW = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SHELL", "TERM",
              "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH",
              "HF_ENDPOINT", "EVO_CACHE_DIR", "XDG_CACHE_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
_ENV_ALLOW_PREFIX = ("LC_", "NVIDIA_", "TORCH", "TRITON_", "NCCL_", "CUBLAS_", "PYTORCH_")
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


# The early-stop rule of one evaluation: the curve so far -> the sentence saying why to stop it, or None.
EarlyStop = Callable[[list[tuple[int, float, float]]], "str | None"]


@dataclass(frozen=True)
class Slot:
    """One place an evaluation can run: a GPU, or the CPU."""
    name: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Confinement:
    """What the sandbox (evo.launch.sandbox) keeps from a candidate: the archive's folder (its
    database and every other evaluation) is invisible, and the preset's data cache (the folder of
    its manifest, apparatus.manifest) is read-only with its validation data invisible to training;
    `manifest` None: an apparatus without a data cache."""
    archive_dir: Path
    manifest: Path | None


@dataclass(frozen=True)
class Limits:
    time_budget: float          # the preset's TIME_BUDGET
    startup_allowance: float    # until the first timed step: imports, data loading, compilation, warm-up steps
    eval_allowance: float       # from the end of training: the final evaluate_bpb and the summary
    kill_grace: float = 5.0     # SIGTERM to SIGKILL
    run_name: str = ""          # for the command that raises an allowance, in timeout messages
    training_limit: float | None = None  # the most seconds the training process may run (None: not measured yet)

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


# The training process's limit once the seed is measured: the budget, this many times the seed's own
# start-up and hand-over time (a bigger model compiles longer), and a margin for a loaded machine.
TRAINING_LIMIT_FACTOR = 3.0
TRAINING_LIMIT_MARGIN = 20.0  # seconds, or a tenth of the budget when that is more
STARTUP_FACTOR = 2.0          # the start-up phase once the seed is measured: twice the seed's ...
STARTUP_MARGIN = 10.0         # ... plus this many seconds, or a twentieth of the budget


def startup_limit(allowance: float, time_budget: float, seed_startups: list[float]) -> float:
    """Limits.startup_allowance once the seed is measured: twice the seed's longest start-up (until
    its training clock started) plus a margin, never more than the configured allowance. Start-up
    is time without a timed progress line, where silent training would otherwise hide."""
    if not seed_startups:
        return allowance
    return min(allowance, STARTUP_FACTOR * max(seed_startups) + max(STARTUP_MARGIN, 0.05 * time_budget))


def training_limit(time_budget: float, seed_processes: list[float]) -> float | None:
    """Limits.training_limit from the seconds the seed's training processes ran by the harness's
    clock (None when none finished): a candidate's process may take the budget plus what the seed
    needed around it, with room; more is training outside the budget, whatever the candidate prints."""
    if not seed_processes:
        return None
    overhead = max(0.0, max(seed_processes) - time_budget)
    return time_budget + TRAINING_LIMIT_FACTOR * overhead + max(TRAINING_LIMIT_MARGIN, 0.1 * time_budget)


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
    - hand-over: the eval allowance, counted from the line reporting the budget reached (or from
      the end of the training window when no line does). Time between the last progress line and
      the hand-over of the model (when the harness saw the file appear) counts as training.
    """

    limits: Limits
    started: float                                    # harness clock when the candidate started
    gaps: list[float] = field(default_factory=list)   # seconds between polls that brought progress lines in training
    first_line: float | None = None                   # when the first progress line of any kind was seen
    training_start: float | None = None               # the harness's training clock
    clock_from_warmup: bool = False                   # it started at the warm-up window's end, not at a timed line
    training_end: float | None = None                 # when the first line reporting the budget reached was seen
    last_line: tuple[float, float] | None = None      # (written no earlier than, elapsed) of the latest progress line
    evaluation_from: float | None = None              # the hand-over began no earlier than this
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # the progress points so far
    _partial: str = ""                                # the log's last line, not yet ended
    _previous: float | None = None                    # the clock at the previous feed
    _line_seen: float | None = None                   # the clock at the previous feed that brought a training line

    def feed(self, text: str, now: float, handed_over: bool = False) -> None:
        """Take what the log gained since the previous feed, and whether the hand-over file
        exists, all seen at `now`."""
        *lines, partial = re.split(r"[\r\n]", self._partial + text)
        self._partial = partial[-10_000:]  # a line without an end is not a progress line yet
        written_after = self.started if self._previous is None else self._previous
        self._previous = now
        if handed_over and self.evaluation_from is None:
            self.evaluation_from = written_after  # seen now, so begun after the previous feed
        points = logs.parse_curve("\n".join(lines), self.limits.time_budget)
        self.curve.extend(points)
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
        latest progress line or the hand-over, whichever is later; counted
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


    def over_budget(self, now: float) -> str | None:
        """The sentence saying the training process ran past Limits.training_limit, or None."""
        limit = self.limits.training_limit
        if limit is None or now - self.started <= limit:
            return None
        budget = self.limits.time_budget
        return (f"the training process ran {now - self.started:.0f} s by the harness's clock, past the {budget:g} s "
                f"budget plus {limit - budget:.0f} s for start-up and hand-over (measured on the seed, with a margin), "
                f"whatever its own clock said")


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
    startup_seconds: float | None = None  # until the training clock started, by the harness's clock
    trained_seconds: float | None = None  # from the training clock's start to the hand-over, by the harness's clock


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
    """Whether a process of the group still runs. A zombie does not: the sandbox's namespace init
    lingers as one until the machine's init reaps it, and waiting for that would cost every
    evaluation the kill grace."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = _group_members(pgid)
    return members is None or bool(members)


def _group_members(pgid: int) -> list[int] | None:
    """The live (not zombie) processes of a group, from /proc; None where there is no /proc."""
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    members = []
    for pid in pids:
        try:
            stat = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat[2]) == pgid and stat[0] != "Z":
            members.append(pid)
    return members


def _launch(python: str, argv: list[str], workdir: Path, env: dict[str, str], log,
            stdin: int = subprocess.DEVNULL) -> tuple[subprocess.Popen, int]:
    """Start `argv` under evo.launch.watchdog as the leader of a new process group. Returns the
    process and the write end of the watchdog's lifeline: closing it, or evo dying, kills the group."""
    lifeline_read, lifeline = os.pipe()  # not inheritable: no other child of evo holds the lifeline open
    try:
        proc = subprocess.Popen([python, "-I", str(WATCHDOG), str(lifeline_read), *argv], cwd=workdir,
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=stdin,
                                start_new_session=True, pass_fds=(lifeline_read,))
    except BaseException:
        os.close(lifeline)
        raise
    finally:
        os.close(lifeline_read)
    return proc, lifeline


@dataclass
class _Training:
    """How the training process ended, by the harness's observation."""
    returncode: int | None
    output: str
    phases: Phases
    seconds: float
    timed_out: str | None
    over_budget: str | None
    interrupted: bool
    stopped_early: str | None  # the early-stop rule's sentence, when it stopped the candidate


def _wait(proc: subprocess.Popen) -> bool:
    """Wait one poll; whether the process has exited."""
    try:
        proc.wait(timeout=POLL_SECONDS)
        return True
    except subprocess.TimeoutExpired:
        return False


def _train(python: str, argv: list[str], workdir: Path, env: dict[str, str], limits: Limits,
           stop: threading.Event | None, early_stop: EarlyStop | None = None,
           on_clock: Callable[[], None] | None = None) -> _Training:
    """Run train.py (`argv`) to its end, holding it to its limits (Phases) and stopping it when
    `early_stop` says so; its children die with it. `on_clock` is called once, when the
    harness's training clock starts."""
    log_path, hand_over = workdir / "run.log", workdir / HAND_OVER
    timed_out = over = stopped = None
    judged = 0  # progress points the early-stop rule has seen: it is asked again only when more arrive
    interrupted = False
    with open(log_path, "wb") as log, open(log_path, "rb") as reader:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        p0 = time.monotonic()
        phases = Phases(limits, p0)
        proc, lifeline = _launch(python, argv, workdir, env, log)
        try:
            (workdir / PID_FILE).write_text(str(proc.pid))  # lets a resumed run kill what a crash left behind
            while not _wait(proc):
                now = time.monotonic()
                phases.feed(decoder.decode(reader.read()), now, hand_over.exists())
                if on_clock is not None and phases.training_start is not None:
                    on_clock()
                    on_clock = None
                interrupted = stop is not None and stop.is_set()
                over = None if interrupted else phases.over_budget(now)
                timed_out = None if interrupted or over else phases.overrun(now)
                if early_stop is not None and not (interrupted or timed_out or over) and len(phases.curve) > judged:
                    judged = len(phases.curve)
                    stopped = early_stop(list(phases.curve))
                if interrupted or timed_out or over or stopped:
                    kill_group(proc, limits.kill_grace)
                    break
            p1 = time.monotonic()
            phases.feed(decoder.decode(reader.read(), final=True), p1, hand_over.exists())
            if not (interrupted or timed_out or over or stopped):
                over = phases.over_budget(p1)
            if _group_alive(proc.pid):  # children the candidate left behind die with it
                kill_group(proc, limits.kill_grace)
        finally:
            os.close(lifeline)  # whatever is still alive now, the watchdog kills (also when this thread fails)
    return _Training(proc.returncode, log_path.read_text(errors="replace"), phases, p1 - p0, timed_out, over, interrupted,
                     stopped)


class _Scorer:
    """The evaluation process, started warm: it imports torch and the locked prepare.py while the
    candidate starts up, is stopped (SIGSTOP; see pause) while the training clock runs so it
    takes no CPU from the measured training, and scores the moment the hand-over is in place. What
    the slot waits for after training is the load and the score, not an interpreter and its imports."""

    def __init__(self, python: str, argv: list[str], harness: Path, env: dict[str, str]):
        self.log_path = harness / "evaluate.log"
        self._log = open(self.log_path, "wb")
        go_read, self._go = os.pipe()
        try:
            self.proc, self._lifeline = _launch(python, argv, harness, env, self._log, stdin=go_read)
        except BaseException:
            os.close(self._go)
            self._log.close()
            raise
        finally:
            os.close(go_read)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def pause(self) -> None:
        """Stop the group but its leader, the watchdog: it must still see evo die (its lifeline)
        and kill the group then, or a kill -9 of evo would leave the scorer stopped for good."""
        for pid in _group_members(self.proc.pid) or []:
            if pid != self.proc.pid:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass

    def score(self, limits: Limits, stop: threading.Event | None) -> dict | None:
        """The verdict on the hand-over (logs.scored_verdict), or None when stopped."""
        self._signal(signal.SIGCONT)
        try:
            os.write(self._go, b"go\n")
        except BrokenPipeError:
            pass  # it died warming up: its log and status say why
        deadline = time.monotonic() + limits.eval_allowance
        while not _wait(self.proc):
            if stop is not None and stop.is_set():
                kill_group(self.proc, limits.kill_grace)
                return None
            if time.monotonic() > deadline:
                kill_group(self.proc, limits.kill_grace)
                run = limits.run_name or "RUN"
                return {"fail": "timeout", "detail": (
                    f"the harness's evaluation of the handed-over model did not finish within --eval-allowance "
                    f"{limits.eval_allowance:g} s; raise it with `evo run --resume --name {run} --eval-allowance "
                    f"{_more(limits.eval_allowance)}`")}
        self._log.flush()
        return logs.scored_verdict(self.proc.returncode, self.log_path.read_text(errors="replace"))

    def close(self) -> None:
        """Kill it if it is still waiting (nothing to score, or stopped), and let go of its pipes."""
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)  # harness code with nothing to clean up; works on a stopped group
            self.proc.wait()
        for fd in (self._go, self._lifeline):
            os.close(fd)
        self._log.close()


def compile_cache_env(folder: Path) -> dict[str, str]:
    """Where torch.compile keeps its kernels for a process whose cache is `folder`."""
    return {"TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"), "TRITON_CACHE_DIR": str(folder / "triton")}


def inherit_compile_cache(source: Path | None, target: Path, max_bytes: int = COMPILE_CACHE_MAX_BYTES) -> int:
    """Copy the compile cache `source` (an earlier evaluation's, written by candidate code) into
    `target`, an evaluation's own folder; returns the bytes copied. Regular files only: a link
    left there could name any file of the harness's user, and a copy (not a hard link) keeps
    what this evaluation writes out of the cache its source and siblings read. Nothing is copied
    when `source` holds more than `max_bytes`."""
    if source is None or not source.is_dir() or source.is_symlink():
        return 0
    files = []
    for root, dirs, names in os.walk(source):   # os.walk does not follow links to folders
        for name in names:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                files.append((path, path.stat().st_size))
    if sum(size for _, size in files) > max_bytes:
        return 0
    copied = 0
    for path, size in files:
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(path, dest)
        except FileNotFoundError:   # the engine pruned the source meanwhile: a smaller head start
            continue
        copied += size
    return copied


def _sandboxes(confine: Confinement, workdir: Path, harness: Path, gpu: bool) -> tuple[Sandbox, Sandbox]:
    """The training process's sandbox and the evaluation process's: training sees no validation
    data and cannot write its prepare.py; the evaluation reads the validation data and writes only
    the harness's folder."""
    data = [] if confine.manifest is None else [confine.manifest.parent]
    # The run prepared its preset before the first evaluation: the manifest names the validation data.
    validation = hidden_validation(confine.manifest) if confine.manifest is not None else []
    training = Sandbox.build(workdir, hidden=[*validation, confine.archive_dir],
                             readonly=[*harness_paths(), *data, workdir / "prepare.py"], gpu=gpu)
    evaluation = Sandbox.build(harness, hidden=[confine.archive_dir], readonly=[*harness_paths(), *data], gpu=gpu)
    return training, evaluation


def run_evaluation(*, code: str, workdir: Path, prepare_src: Path, locked_hash: str, slot: Slot, seed: int,
                   limits: Limits, preset: str, stop: threading.Event | None = None,
                   confine: Confinement | None = None, python: str = sys.executable,
                   early_stop: EarlyStop | None = None, compile_cache: Path | None = None) -> EvalResult:
    """Train one candidate in `workdir`, then score what it handed over in a process of the harness's
    own; both sandboxed when `confine` is given. `stop` set means: kill it now (second Ctrl-C).
    `early_stop` is asked with the curve so far whenever progress points arrive; its sentence
    kills the candidate like a timeout, and the evaluation ends PRUNED(early_stop), curve kept.
    `compile_cache`: an earlier evaluation's compile cache, copied for this one to start from."""
    t0 = time.monotonic()
    harness = workdir.with_name(workdir.name + HARNESS_SUFFIX)
    for folder in (workdir, harness):  # a re-queued evaluation starts clean
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    (workdir / "train.py").write_text(code)
    inherit_compile_cache(compile_cache, workdir / COMPILE_CACHE)
    prepare = workdir / "prepare.py"
    for copy in (prepare, harness / "prepare.py"):
        shutil.copyfile(prepare_src, copy)
        if file_hash(copy) != locked_hash:
            raise RuntimeError(f"{prepare_src} changed since the run started; the apparatus is locked")
    hand_over, scored_file = workdir / HAND_OVER, harness / HAND_OVER
    env = scrub_env(dict(os.environ), {**slot.env, "EVO_PRESET": preset, "PYTHONUNBUFFERED": "1",
                                       "PYTHONDONTWRITEBYTECODE": "1"})
    train_argv = [python, "train.py"]
    score_argv = [python, "-I", "-m", "evo.launch.evaluate", str(scored_file), str(harness)]
    if confine is not None:
        home = Path(env.get("HOME") or "/nonexistent").resolve()
        boxes = _sandboxes(confine, workdir, harness, gpu=slot.name.startswith("gpu"))
        train_argv, score_argv = wrap(train_argv, boxes[0], home), wrap(score_argv, boxes[1], home)
    # The scorer compiles nothing from a cache candidate code wrote: its own, in the harness's folder.
    scorer = _Scorer(python, score_argv, harness, {**env, **compile_cache_env(harness / COMPILE_CACHE)})
    try:
        training = _train(python, train_argv, workdir, {**env, **compile_cache_env(workdir / COMPILE_CACHE),
                                                        "EVO_SEED": str(seed), HAND_OVER_ENV: str(hand_over)},
                          limits, stop, early_stop, on_clock=scorer.pause)
        prepare_changed = (not prepare.exists() or file_hash(prepare) != locked_hash
                           or file_hash(prepare_src) != locked_hash)
        interrupted = training.interrupted
        scored = None
        # A regular file only, moved out of the candidate's reach (a link could name anything).
        if (training.returncode == 0 and not (interrupted or training.timed_out or training.over_budget
                                              or prepare_changed or training.stopped_early)
                and hand_over.is_file() and not hand_over.is_symlink()):
            os.replace(hand_over, scored_file)
            scored = scorer.score(limits, stop)
            interrupted = scored is None
    finally:
        scorer.close()
    outcome = logs.classify(training.returncode, training.output, timed_out=training.timed_out,
                            over_budget=training.over_budget, interrupted=interrupted,
                            stopped_early=training.stopped_early,
                            time_budget=limits.time_budget, budget_slack=training.phases.slack, scored=scored,
                            prepare_changed=prepare_changed, training_wall=training.phases.training_wall)
    curve = _downsample(logs.parse_curve(training.output, limits.time_budget))
    tail = "\n".join(logs.split_lines(training.output)[-LOG_TAIL_LINES:])
    wall = time.monotonic() - t0
    phases = training.phases
    startup = None if phases.training_start is None else phases.training_start - phases.started
    return EvalResult(outcome, curve, training.returncode, wall, wall - training.seconds, tail, startup,
                      phases.training_wall)
