"""The watchdog every candidate runs under, so that a train.py does not outlive its evo process.

`evo.launch.runner` starts `python -I watchdog.py FD PROGRAM ARGS...` as the leader of a new process
group, passing FD, the read end of a pipe whose write end only evo holds. The watchdog starts the
candidate as its child in the same group, then waits for whichever comes first:

- the candidate exits: the watchdog exits with the candidate's status (or dies of its signal), so
  the harness sees what the candidate did;
- FD reads end-of-file: evo closed its end or died in any way, kill -9 included (the kernel closes
  a dead process's files). The whole group gets SIGKILL: the candidate, everything it started, and
  the watchdog.

A pipe rather than PR_SET_PDEATHSIG on the candidate, because that signal follows the *thread* that
forked, and evo starts candidates from short-lived pool threads. The candidate itself does get
PR_SET_PDEATHSIG (on Linux) for the single-threaded watchdog's death, so killing its watchdog does
not free it from the guard.

What it does not cover: a process the candidate starts that calls setsid() (or setpgid()) leaves
the group, so killpg misses it, and PR_SET_PDEATHSIG does not follow a fork (a grandchild that was
never given it, or that cleared it, ignores the watchdog's death). Such a process outlives evo
and the resume's orphan kill alike; only an OS boundary (a container or cgroup per evaluation)
would hold it. The watchdog stops honest candidates, and careless ones that leave children
behind, not a candidate that means to escape.

Standard library only, and run in isolated mode (-I): nothing from the candidate's folder or the
environment's PYTHON* variables reaches the watchdog's own interpreter.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def main() -> None:
    fd, program = int(sys.argv[1]), sys.argv[2:]
    watchdog = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(fd)
        _die_with(watchdog)
        try:
            os.execvp(program[0], program)
        except OSError as e:
            print(f"evo watchdog: cannot start {program[0]}: {e}", file=sys.stderr, flush=True)
            os._exit(127)
    # The harness's SIGTERM (timeout, second Ctrl-C) is for the candidate: the watchdog leaves when
    # the candidate does, and the harness's SIGKILL after the grace period ends both.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_watch, args=(fd,), daemon=True).start()
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        if -code != signal.SIGKILL:  # whose disposition cannot be set (nor needs to be)
            signal.signal(-code, signal.SIG_DFL)
        os.kill(watchdog, -code)
        code = 128 - code  # only for a signal whose default action does not end a process
    os._exit(code)


def _watch(fd: int) -> None:
    while os.read(fd, 512):
        pass  # evo writes nothing: any read that returns is end-of-file
    os.killpg(0, signal.SIGKILL)


def _die_with(parent: int) -> None:
    """SIGKILL this process when the watchdog dies (PR_SET_PDEATHSIG). Linux only; elsewhere the
    pipe, the process group and the resume's orphan kill remain."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)  # the watchdog died before the guard was set


if __name__ == "__main__":
    main()
