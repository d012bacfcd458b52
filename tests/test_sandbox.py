"""The candidate sandbox (evo.launch.sandbox): the bwrap command line it builds (pure), and hostile
scripts run through it for real, each of which must fail or see nothing.

The hostile tests build their fake archive, cache and home under /var/tmp, not pytest's tmp_path
under /tmp: the sandbox replaces /tmp with an empty tmpfs, which would hide everything there and
let a missing rule go unnoticed."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import evo
from evo.launch.runner import WATCHDOG, kill_group
from evo.launch.sandbox import Sandbox, harness_paths, hidden_validation, probe, validation_paths, wrap
from tests.conftest import wait_until

SECRET = "SECRET-VALIDATION-DOCUMENT"
FAKE_KEY = "sk-ant-FAKE-KEY-0123456789"
EVO_INIT = Path(evo.__file__).resolve()
PLANTED = "planted_by_candidate.py"

needs_bwrap = pytest.mark.skipif(probe() is not None, reason=f"no sandbox here: {probe()}")


# ---------------------------------------------------------------------------
# wrap(): the command line, pure
# ---------------------------------------------------------------------------

HOME = Path("/home/u")
WORK = HOME / "archive/files/runs/r/c00001/r0"
CACHE = HOME / ".cache/evo/smoke"


def _pairs(cmd: list[str]) -> list[tuple[str, str]]:
    """(option, destination) of every mount, in order."""
    mounts = {"--ro-bind": 2, "--bind": 2, "--dev-bind": 2, "--tmpfs": 1, "--dev": 1, "--proc": 1}
    out, i = [], 1
    while cmd[i] != "--":
        n = mounts.get(cmd[i], 0)
        if n:
            out.append((cmd[i], cmd[i + n]))
        i += 1 + n
    return out


def test_wrap_mounts_in_order_home_then_readonly_then_hidden_then_workdir():
    box = Sandbox(workdir=WORK, hidden_dirs=(HOME / "archive",), hidden_files=(CACHE / "data/val.parquet",),
                  readonly=(CACHE, CACHE / "tokenizer", Path("/usr"), Path("/tmp/ci/venv"), WORK / "prepare.py"))
    cmd = wrap(["python", "train.py"], box, HOME)
    assert cmd[0] == "bwrap" and cmd[-3:] == ["--", "python", "train.py"]
    assert _pairs(cmd) == [
        ("--ro-bind", "/"), ("--dev", "/dev"), ("--proc", "/proc"), ("--tmpfs", "/tmp"), ("--tmpfs", str(HOME)),
        ("--ro-bind", "/tmp/ci/venv"),                # CI's venv shows through the private /tmp
        ("--ro-bind", str(CACHE)),                    # shows through the empty HOME, its tokenizer with it
        ("--ro-bind", str(CACHE / "data/val.parquet")),  # /dev/null over the validation file
        ("--bind", str(WORK)),                        # the archive folder under HOME is already empty
        ("--ro-bind", str(WORK / "prepare.py")),      # read-only inside the writable workdir
    ]  # /usr is read-only under `--ro-bind / /` already: not bound again
    assert cmd[cmd.index(str(CACHE / "data/val.parquet")) - 1] == "/dev/null"
    assert cmd[cmd.index("--chdir") + 1] == str(WORK)


def test_wrap_hides_folders_outside_home_and_binds_the_workdir_back():
    archive, work = Path("/srv/archive"), Path("/srv/archive/files/runs/r/c00002/r1")
    box = Sandbox(workdir=work, hidden_dirs=(archive, Path("/data/cpu")), hidden_files=(Path("/data/smoke/val"),),
                  readonly=(Path("/srv/archive/project"),))
    pairs = _pairs(wrap(["x"], box, HOME))
    assert pairs.index(("--tmpfs", str(archive))) < pairs.index(("--bind", str(work)))
    assert pairs.index(("--tmpfs", str(archive))) < pairs.index(("--ro-bind", "/srv/archive/project"))
    assert ("--tmpfs", "/data/cpu") in pairs and ("--ro-bind", "/data/smoke/val") in pairs
    # A path hidden already (inside a hidden folder, inside HOME) needs no mount of its own.
    box = Sandbox(workdir=work, hidden_dirs=(Path("/data/cpu"), HOME / ".cache/evo/cpu"),
                  hidden_files=(Path("/data/cpu/val"),))
    assert [d for _, d in _pairs(wrap(["x"], box, HOME)) if "cpu" in d] == ["/data/cpu"]


def test_wrap_hiding_beats_readonly_and_the_workdir_beats_both_on_the_same_path():
    p = Path("/srv/x")
    pairs = _pairs(wrap(["x"], Sandbox(workdir=Path("/w"), hidden_dirs=(p,), readonly=(p,)), HOME))
    assert ("--tmpfs", str(p)) in pairs and ("--ro-bind", str(p)) not in pairs
    pairs = _pairs(wrap(["x"], Sandbox(workdir=p, hidden_dirs=(p,), readonly=(p,)), p.parent))
    assert pairs[-3:] == [("--ro-bind", str(p)), ("--tmpfs", str(p)), ("--bind", str(p))]


def test_wrap_gpu_keeps_the_host_devices_but_not_its_shared_memory():
    cmd = wrap(["x"], Sandbox(workdir=WORK, gpu=True), HOME)
    assert _pairs(cmd)[1:3] == [("--dev-bind", "/dev"), ("--tmpfs", "/dev/shm")]
    assert ("--dev", "/dev") in _pairs(wrap(["x"], Sandbox(workdir=WORK), HOME))


def test_wrap_isolates_namespaces_drops_capabilities_and_stays_in_the_process_group():
    cmd = wrap(["x"], Sandbox(workdir=WORK), HOME, bwrap="/opt/bwrap")
    assert cmd[0] == "/opt/bwrap"
    for flag in ("--unshare-all", "--die-with-parent"):
        assert flag in cmd
    assert cmd[cmd.index("--cap-drop") + 1] == "ALL"
    assert "--share-net" not in cmd
    assert "--new-session" not in cmd  # the runner's killpg must reach the sandboxed process


# ---------------------------------------------------------------------------
# hidden_validation(), probe()
# ---------------------------------------------------------------------------

def _manifest(val: str = "val.parquet", source: str = "tinystories") -> str:
    return json.dumps({"preset": "smoke", "source": source, "train": ["shard_00000.parquet"], "val": val})


def test_validation_paths_from_the_manifest():
    cache = Path("/c/evo/gpu")
    assert validation_paths(_manifest("shard_06542.parquet", "climbmix"), cache) == [
        cache / "data/shard_06542.parquet", cache / "downloads"]
    assert validation_paths(_manifest(source="text:/u/a.txt,/u/b.jsonl"), cache)[2:] == [
        Path("/u/a.txt"), Path("/u/b.jsonl")]  # the user's files hold the validation documents too


def test_hidden_validation_includes_the_other_presets(tmp_path):
    cache = tmp_path / "evo" / "smoke"
    (cache / "data").mkdir(parents=True)
    (tmp_path / "evo" / "cpu").mkdir()
    (cache / "manifest.json").write_text(_manifest())
    assert set(hidden_validation(cache / "manifest.json")) == {cache / "data/val.parquet", cache / "downloads", tmp_path / "evo/cpu"}


def test_probe_says_why_there_is_no_sandbox(tmp_path):
    assert "not installed" in probe(str(tmp_path / "no-such-bwrap"))
    fake = tmp_path / "bwrap"  # a bwrap that fails the way one does where user namespaces are off
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    why = probe(str(fake))
    assert "user namespaces" in why and "uid map" in why and "\n" not in why


def test_build_drops_a_readonly_path_a_candidate_pointed_elsewhere(tmp_path):
    workdir, archive = tmp_path / "archive/files/c1", tmp_path / "archive"
    workdir.mkdir(parents=True)
    (archive / "evo.db").write_text("DB")
    (workdir / "prepare.py").symlink_to(archive / "evo.db")  # left by the training phase
    (tmp_path / "cache").mkdir()
    box = Sandbox.build(workdir / "." / "", hidden=[archive, tmp_path / "missing"],
                        readonly=[workdir / "prepare.py", tmp_path / "cache"], gpu=False)
    assert box.readonly == (tmp_path.resolve() / "cache",)
    assert box.hidden_dirs == (archive.resolve(),) and box.hidden_files == ()


@needs_bwrap
def test_probe_finds_a_working_sandbox():
    assert probe() is None


# ---------------------------------------------------------------------------
# Hostile scripts through the real sandbox
# ---------------------------------------------------------------------------

@dataclass
class Box:
    root: Path
    home: Path
    workdir: Path
    cache: Path
    archive: Path
    sandbox: Sandbox
    env: dict[str, str]

    def argv(self, code: str, *args: str) -> list[str]:
        return wrap([sys.executable, "-c", code, *map(str, args)], self.sandbox, self.home)

    def run(self, code: str, *args: str, env: dict[str, str] | None = None) -> dict:
        """Run code in the sandbox; it prints one JSON object, which is returned."""
        done = subprocess.run(self.argv(code, *args), env=env or self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def box(request):
    """A fake archive, home and cache under /var/tmp; `gpu` by indirect parametrisation (default off)."""
    root = Path(tempfile.mkdtemp(prefix="evo-sandbox-", dir="/var/tmp")).resolve()
    try:
        yield _make_box(root, gpu=getattr(request, "param", False))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _make_box(root: Path, gpu: bool) -> Box:
    home = root / "home"
    cache = home / ".cache/evo/smoke"
    for d in (cache / "data", cache / "tokenizer", cache / "downloads", home / ".cache/evo/cpu/data"):
        d.mkdir(parents=True)
    (cache / "manifest.json").write_text(_manifest())
    (cache / "data/shard_00000.parquet").write_text("TRAIN")
    (cache / "data/val.parquet").write_text(SECRET)
    (cache / "downloads/TinyStoriesV2-GPT4-valid.txt").write_text(SECRET)
    (home / ".cache/evo/cpu/data/val.parquet").write_text(SECRET)
    project = root / "project"
    project.mkdir()
    (project / "prepare.py").write_text("# the apparatus\n")
    archive = root / "archive"
    workdir, sibling = archive / "files/runs/r/c00001/r0", archive / "files/runs/r/c00002/r0"
    for d in (workdir, sibling):
        d.mkdir(parents=True)
        (d / "prepare.py").write_text("# the apparatus\n")
        (d / "train.py").write_text("print('honest')\n")
    (archive / "evo.db").write_text("DB")
    sandbox = Sandbox.build(workdir, hidden=[*hidden_validation(cache / "manifest.json"), archive],
                            readonly=[*harness_paths(), project, cache, workdir / "prepare.py"], gpu=gpu)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}  # scrubbed, as the runner's
    return Box(root, home, workdir, cache, archive, sandbox, env)


OPEN_FOR_WRITING = """
import json, os, sys
out = {}
for target in sys.argv[1:]:
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_APPEND))  # opened, never written: the test must not harm evo
        out[target] = "opened"
    except OSError as e:
        out[target] = e.strerror
    planted = os.path.join(os.path.dirname(target), "%s")
    try:
        os.close(os.open(planted, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        out[planted] = "created"
    except OSError as e:
        out[planted] = e.strerror
print(json.dumps(out))
""" % PLANTED


@needs_bwrap
def test_candidate_cannot_write_outside_its_workdir(box):
    targets = [box.workdir / "prepare.py", box.archive / "evo.db", box.archive / "files/runs/r/c00002/r0/train.py",
               box.root / "project/prepare.py", box.cache / "manifest.json", box.cache / "data/shard_00000.parquet",
               EVO_INIT]
    before = {t: t.read_bytes() for t in targets}
    try:
        out = box.run(OPEN_FOR_WRITING, *targets)
    finally:
        leaked = [t.parent / PLANTED for t in targets[1:] if (t.parent / PLANTED).exists()]
        for p in leaked:
            p.unlink()
    assert not leaked, out  # a file planted in a hidden folder lands in its tmpfs, which nobody else sees
    assert not [t for t in targets if out[str(t)] == "opened"], out
    assert {t: t.read_bytes() for t in targets} == before


HONEST = """
import json, os, sys
import torch
with open("checkpoint.txt", "w") as f:
    f.write(str(float(torch.ones(3).sum())))
with open(os.path.join(sys.argv[1], "data/shard_00000.parquet")) as f:
    train = f.read()
print(json.dumps({"train": train, "prepare": open("prepare.py").read(), "cwd": os.getcwd()}))
"""


@needs_bwrap
def test_honest_candidate_writes_its_workdir_reads_train_data_and_imports_torch(box):
    out = box.run(HONEST, box.cache)
    assert out == {"train": "TRAIN", "prepare": "# the apparatus\n", "cwd": str(box.workdir)}
    assert (box.workdir / "checkpoint.txt").read_text() == "3.0"


READ_EVERYTHING = """
import json, sys
out = {}
for path in sys.argv[1:]:
    try:
        with open(path, errors="replace") as f:
            out[path] = f.read()
    except OSError as e:
        out[path] = e.strerror
print(json.dumps(out))
"""


@needs_bwrap
def test_validation_data_archive_and_other_slots_are_invisible(box):
    paths = [box.cache / "data/val.parquet", box.cache / "downloads/TinyStoriesV2-GPT4-valid.txt",
             box.home / ".cache/evo/cpu/data/val.parquet", box.archive / "evo.db",
             box.archive / "files/runs/r/c00002/r0/train.py"]
    out = box.run(READ_EVERYTHING, *paths)
    assert not [what for what in out.values() if SECRET in what], out  # a hidden file reads as nothing at all
    assert [out[str(p)] for p in paths[3:]] == ["No such file or directory"] * 2, out


UNMOUNT = """
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def attempt(step):
    for path in sys.argv[1:]:
        libc.umount2(path.encode(), 2)  # MNT_DETACH: what hides the path
        try:
            out[step + path] = open(path, errors="replace").read()
        except OSError as e:
            out[step + path] = e.strerror
attempt("root:")
# A user namespace of its own gives every capability again, over a copy of the mounts.
if libc.unshare(0x10000000 | 0x00020000) == 0:  # CLONE_NEWUSER | CLONE_NEWNS
    attempt("userns:")
print(json.dumps(out))
"""


@needs_bwrap
def test_root_inside_cannot_unmount_what_hides_the_validation_data(box):
    out = box.run(UNMOUNT, box.cache / "data/val.parquet", box.home / ".cache/evo/cpu/data/val.parquet")
    assert not [what for what in out.values() if SECRET in what], out


SCAN_PROC = """
import json, os, sys
key, harness = sys.argv[1][::-1].encode(), sys.argv[2]  # reversed: its own cmdline does not hold the key
found = []
for pid in [p for p in os.listdir("/proc") if p.isdigit()] + [harness]:
    for name in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                if key in f.read():
                    found.append(f"{pid}/{name}")
        except OSError:
            pass
print(json.dumps({"found": found, "ppid": os.getppid(), "key": os.environ.get("ANTHROPIC_API_KEY")}))
"""

# The harness side: holds the API key, starts the sandboxed candidate with a scrubbed environment
# and tells it its own pid, the way a candidate could learn it (getppid without a sandbox).
HARNESS = """
import json, os, subprocess, sys
argv, env = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.exit(subprocess.run(argv + [str(os.getpid())], env=env).returncode)
"""


@needs_bwrap
def test_no_view_of_the_harness_processes_or_their_keys(box):
    harness = subprocess.run([sys.executable, "-c", HARNESS, json.dumps(box.argv(SCAN_PROC, FAKE_KEY[::-1])),
                              json.dumps(box.env)],
                             env={**box.env, "ANTHROPIC_API_KEY": FAKE_KEY}, capture_output=True, text=True,
                             timeout=300)
    assert harness.returncode == 0, harness.stderr
    out = json.loads(harness.stdout.strip().splitlines()[-1])
    assert out == {"found": [], "ppid": 1, "key": None}  # its parent is the sandbox's own init


CONNECT = """
import json, socket, sys
out = {}
for name, family, address in (("tcp", socket.AF_INET, ("127.0.0.1", int(sys.argv[1]))),
                              ("abstract-unix", socket.AF_UNIX, "\\0" + sys.argv[2])):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(address)
        out[name] = "connected"
    except OSError as e:
        out[name] = e.strerror or type(e).__name__
print(json.dumps(out))
"""


@needs_bwrap
def test_no_network_to_a_server_of_the_host(box):
    name = f"evo-sandbox-test-{os.getpid()}"
    with socket.create_server(("127.0.0.1", 0)) as tcp, socket.socket(socket.AF_UNIX) as unix:
        unix.bind("\0" + name)
        unix.listen()
        out = box.run(CONNECT, tcp.getsockname()[1], name)
        for server in (tcp, unix):
            server.setblocking(False)
            with pytest.raises(BlockingIOError):
                server.accept()
    assert "connected" not in out.values(), out


LEAVE_BEHIND = """
import json, os, sys
places = [os.path.expanduser("~/.cache/warm-start"), "/tmp/warm-start", "/dev/shm/warm-start"]
seen = {p: os.path.exists(p) for p in places}
written = {}
for p in places:
    try:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write("weights")
        written[p] = True
    except OSError:
        written[p] = False
print(json.dumps({"seen": seen, "written": written}))
"""


@pytest.mark.parametrize("box", [False, True], ids=["cpu", "gpu"], indirect=True)
@needs_bwrap
def test_nothing_is_left_for_the_next_candidate(box):
    first = box.run(LEAVE_BEHIND)
    assert all(first["written"].values()), first  # a private HOME, /tmp and /dev/shm are writable
    second = box.run(LEAVE_BEHIND)
    assert not any(second["seen"].values()), second
    assert not (box.home / ".cache/warm-start").exists() and not Path("/dev/shm/warm-start").exists()


DAEMON = """
import os, signal, sys, time
log, how = sys.argv[1], sys.argv[2]
if how == "ignores-sigterm":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()  # leaves the process group the runner kills
    if os.fork() == 0:
        while os.path.isdir(os.path.dirname(log)):  # rewrites a result for as long as it lives (and the test's folder)
            with open(log, "a") as f:
                f.write("score 0.1\\n")
            time.sleep(0.05)
    os._exit(0)
while not os.path.exists(log):
    time.sleep(0.01)
print("daemon running", flush=True)
if how != "exits":
    time.sleep(3600)
"""


@pytest.mark.parametrize("how", ["exits", "killed", "ignores-sigterm"])
@needs_bwrap
def test_a_setsid_daemon_dies_with_the_candidate(box, how):
    """Started the way the runner starts a candidate (its watchdog, a new session, killpg on
    overrun); the daemon holds a pipe open, so the pipe's end-of-file proves everything died."""
    lifeline_read, lifeline = os.pipe()
    held_read, held = os.pipe()
    log = box.workdir / "daemon.log"
    try:
        proc = subprocess.Popen([sys.executable, "-I", str(WATCHDOG), str(lifeline_read),
                                 *box.argv(DAEMON, log, how)], env=box.env, stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(lifeline_read, held))
    finally:
        os.close(lifeline_read)
        os.close(held)
    try:
        assert proc.stdout.readline() == b"daemon running\n"
        if how == "exits":
            assert proc.wait(timeout=300) == 0
        else:
            kill_group(proc, grace=2.0)
        wait_until(lambda: select.select([held_read], [], [], 0)[0] and os.read(held_read, 1) == b"",
                   "every process of the sandbox to exit", timeout=60)
        assert log.read_text().startswith("score")  # it did run
    finally:
        kill_group(proc, grace=2.0)  # whatever a failed assertion left running
        proc.stdout.close()
        os.close(lifeline)
        os.close(held_read)
