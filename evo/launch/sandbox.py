"""The sandbox a candidate's processes run in (Linux, bubblewrap): what they can see, write and reach.

`wrap(argv, sandbox, home)` is pure: it returns the bwrap command line that runs argv with

- everything read-only (`--ro-bind / /`), the evaluation's own folder (workdir) the one writable
  place besides a private, empty /tmp and HOME (tmpfs: nothing is left for the next candidate);
- hidden paths made invisible: an empty tmpfs over a folder, /dev/null over a file (the validation
  data for training; the archive's folder, so its database and the other evaluations' folders);
- read-only paths that must stay visible bound back where they lie under HOME, a hidden folder or
  the workdir (the interpreter, the evo package, the apparatus, the data cache);
- no network, and its own PID, IPC, UTS and cgroup namespaces with a fresh /proc: the harness's
  processes, their environments (API keys) and their loopback servers are out of reach;
- no capabilities (`--cap-drop ALL`): root inside the sandbox cannot unmount what hides a path,
  and a nested user namespace only gets locked copies of these mounts.

Order matters to bwrap: a later mount covers an earlier one. Mounts are emitted shallowest path
first, so a mount never covers one that must stay on top of it.

How every process dies with the evaluation. No `--new-session`: the sandboxed process stays in the
runner's process group, so the runner's killpg (SIGTERM, then SIGKILL) reaches it and bwrap itself.
A process that detaches with setsid() escapes the group but not the PID namespace: bwrap's
pid-1 reaper exits when the sandboxed command does, and the kernel then SIGKILLs everything left in
the namespace; the reaper also dies with bwrap (--die-with-parent), and bwrap is in the group.
(--new-session guards a controlling terminal against TIOCSTI; the runner's candidates already run in
a session of their own with no terminal.)
"""

from __future__ import annotations

import functools
import json
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Where prepare.py keeps raw downloads a corpus is split from (prepare.prepare): they hold the
# validation documents too.
DOWNLOADS_DIR = "downloads"
TEXT_SOURCE_PREFIX = "text:"  # manifest["source"] of a preset prepared from the user's own files
PROBE_TIMEOUT = 60.0          # seconds; a loaded box starts a namespace slowly, a broken one not at all

UNSANDBOXED_WARNING = ("evo: warning: candidates run without a sandbox ({reason}); a candidate can read the "
                       "validation data, write the archive and reach the network, so trust its scores only as "
                       "far as you trust its code (install bubblewrap, or pass --no-sandbox to accept this).")


@dataclass(frozen=True)
class Sandbox:
    """Absolute, resolved paths (see `build`): the pure `wrap` cannot look at the file system."""
    workdir: Path                          # the only writable path besides the private /tmp and HOME
    hidden_dirs: tuple[Path, ...] = ()     # invisible: an empty tmpfs on top
    hidden_files: tuple[Path, ...] = ()    # invisible: /dev/null on top
    readonly: tuple[Path, ...] = ()        # visible read-only even under HOME or a hidden folder
    gpu: bool = False                      # the host's /dev (NVIDIA device nodes) instead of a minimal one

    @classmethod
    def build(cls, workdir: Path, *, hidden: list[Path], readonly: list[Path], gpu: bool) -> Sandbox:
        """Resolve the paths (a symlinked cache or home must be mounted over where it really lies) and
        sort hidden paths into folders and files. A hidden path that does not exist is left out: its
        parent is read-only in the sandbox, so the candidate cannot create it either. A read-only path
        inside the workdir that passes through a symlink is left out too: a candidate that ran there
        before (training, then evaluation) could have pointed it anywhere, the archive included."""
        workdir = workdir.resolve()
        hidden = [p.resolve() for p in hidden if p.exists()]
        return cls(workdir=workdir,
                   hidden_dirs=tuple(p for p in hidden if p.is_dir()),
                   hidden_files=tuple(p for p in hidden if not p.is_dir()),
                   readonly=tuple(p.resolve() for p in readonly if p.exists() and _no_link_inside(p, workdir)),
                   gpu=gpu)


def _no_link_inside(path: Path, workdir: Path) -> bool:
    path = path.absolute()
    return not path.is_relative_to(workdir) or path.resolve() == path


def harness_paths() -> list[Path]:
    """What the Python running evo needs, read-only, whatever it lies under: the interpreter and the
    standard library, site-packages (torch), the user's site-packages, and the evo package itself (not
    the project folder around it, which may hold a .env with keys)."""
    paths = {sys.prefix, sys.base_prefix, site.getusersitepackages(), str(Path(__file__).resolve().parents[1]),
             *(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))}
    return sorted(Path(p) for p in paths)


# Layers, in the order they apply to one path: a private tmpfs (HOME, /tmp) starts empty, a read-only
# path shows through it, hiding beats a read-only wish, and the workdir is the candidate's own
# whatever lies around it.
_PRIVATE, _READONLY, _HIDDEN, _WORKDIR = range(4)
_TMP = Path("/tmp")


def _layers(sandbox: Sandbox, home: Path) -> list[tuple[Path, int]]:
    layers = [(_TMP, _PRIVATE), (home, _PRIVATE), *((p, _READONLY) for p in sandbox.readonly),
              *((p, _HIDDEN) for p in (*sandbox.hidden_dirs, *sandbox.hidden_files)), (sandbox.workdir, _WORKDIR)]
    layers.sort(key=lambda layer: (len(layer[0].parts), layer[1]))
    kept: list[tuple[Path, int]] = []
    for path, kind in layers:
        below = [k for p, k in kept if path.is_relative_to(p)]
        covered_by = below[-1] if below else None  # the last one applied over this path
        if kind == _READONLY and covered_by in (None, _READONLY):
            continue  # already read-only and visible (under `--ro-bind / /`, or a read-only path above)
        if kind == _HIDDEN and covered_by in (_PRIVATE, _HIDDEN):
            continue  # already invisible
        kept.append((path, kind))
    return kept


def wrap(argv: list[str], sandbox: Sandbox, home: Path, bwrap: str = "bwrap") -> list[str]:
    """The command that runs argv in the sandbox, in the workdir, with HOME (`home`) private."""
    hidden_files = set(sandbox.hidden_files)
    cmd = [bwrap, "--ro-bind", "/", "/"]
    # /dev/shm of the host is shared and writable: a channel between candidates, so a private one.
    cmd += ["--dev-bind", "/dev", "/dev", "--tmpfs", "/dev/shm"] if sandbox.gpu else ["--dev", "/dev"]
    cmd += ["--proc", "/proc"]
    for path, kind in _layers(sandbox, home):
        p = str(path)
        if kind == _READONLY:
            cmd += ["--ro-bind", p, p]
        elif kind == _WORKDIR:
            cmd += ["--bind", p, p]
        elif path in hidden_files:
            cmd += ["--ro-bind", "/dev/null", p]
        else:  # a private tmpfs or a hidden folder
            cmd += ["--tmpfs", p]
    cmd += ["--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--chdir", str(sandbox.workdir), "--", *argv]
    return cmd


def validation_paths(manifest_text: str, cache_dir: Path) -> list[Path]:
    """What holds a prepared preset's validation documents, from its manifest: the validation shard
    (manifest["val"] under cache_dir/data, as prepare.py reads it), the raw downloads it was split
    from, and the user's own files for a preset prepared with --text."""
    manifest = json.loads(manifest_text)
    paths = [cache_dir / "data" / manifest["val"], cache_dir / DOWNLOADS_DIR]
    source = manifest.get("source") or ""
    if source.startswith(TEXT_SOURCE_PREFIX):
        paths += [Path(p) for p in source[len(TEXT_SOURCE_PREFIX):].split(",") if p]
    return paths


def hidden_validation(manifest: Path) -> list[Path]:
    """The paths training must not see for the preset whose manifest (apparatus.manifest, in the
    preset's cache folder) is given: its validation data (validation_paths) and the other presets'
    folders beside it, which may hold the same documents. The preset must be prepared."""
    cache_dir = manifest.parent
    siblings = [p for p in cache_dir.parent.iterdir() if p.is_dir() and p.name != cache_dir.name]
    return validation_paths(manifest.read_text(), cache_dir) + siblings


@functools.cache
def probe(bwrap: str = "bwrap") -> str | None:
    """None when a trivial command runs in the sandbox here, else one sentence saying why not."""
    if shutil.which(bwrap) is None:
        return f"bubblewrap ({bwrap}) is not installed; install it (apt-get install bubblewrap)"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run(wrap(["true"], Sandbox(workdir=Path(tmp)), Path(tmp), bwrap),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"bubblewrap did not start a trivial sandbox within {PROBE_TIMEOUT:.0f} s"
        except OSError as e:
            return f"bubblewrap ({bwrap}) cannot be started: {e.strerror}"
    if done.returncode == 0:
        return None
    why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    if any(word in why for word in ("uid map", "namespace", "Operation not permitted", "Permission denied")):
        return (f"bubblewrap cannot create namespaces here ({why}); user namespaces are disabled or restricted "
                "(sysctl kernel.unprivileged_userns_clone=1, or kernel.apparmor_restrict_unprivileged_userns=0)")
    return f"bubblewrap fails on a trivial command here ({why})"
