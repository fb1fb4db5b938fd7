"""Start, recognise and stop the local cluster's processes.

Used by cluster.py for the control-plane components and by the kubelet for pod
processes. Every process starts in a session of its own: it survives the command that
started it, and one signal to its process group reaches everything it forked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

__all__ = ["alive", "belongs_to", "recorded_pids", "spawn", "terminate_groups"]


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    parent_death_signal: signal.Signals | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv in a new session, stdout and stderr appended to log.

    With parent_death_signal the process gets that signal when its parent dies, so that
    a test session killed without its teardown leaves no control plane behind. Only for
    a single-threaded parent: the hook runs between fork and exec.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_on_parent_death(parent_death_signal) if parent_death_signal else None,
        )


# Loaded before any fork: loading a library between fork and exec is not safe.
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _on_parent_death(sig: signal.Signals) -> Callable[[], None]:
    def arrange() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig))

    return arrange


def alive(pid: int) -> bool:
    """Whether pid runs; a zombie counts as dead.

    The machine's init may never reap orphans (a container's pid 1 often does not),
    so a signal-0 probe alone would call a finished process alive.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name, which sits in parentheses and may
    # itself contain spaces or parentheses.
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def belongs_to(pid: int, marker: str) -> bool:
    """Whether pid looks like one of ours: marker in its arguments, environment or cwd.

    Guards against signalling an unrelated process that reused a recorded pid.
    """
    proc = Path(f"/proc/{pid}")
    for name in ("cmdline", "environ"):
        try:
            if marker.encode() in (proc / name).read_bytes():
                return True
        except OSError:
            continue
    try:
        return marker in os.readlink(proc / "cwd")
    except OSError:
        return False


def recorded_pids(pid_files: Iterable[Path]) -> list[int]:
    """The live pids written in pid_files, each checked against its file's folder.

    The kubelet writes one pid file per running container into the pod's folder, and the
    process's HOME is that folder; a pid reused by a stranger is left alone.
    """
    pids = []
    for pid_file in pid_files:
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        if alive(pid) and belongs_to(pid, str(pid_file.parent)):
            pids.append(pid)
    return pids


def terminate_groups(pids: Iterable[int], *, grace: float) -> None:
    """SIGTERM each pid's process group, then SIGKILL whatever is left after grace.

    Each pid must lead its own group (see spawn). The final SIGKILL goes to every
    group even when its leader has exited, so that forked children do not linger.
    """
    groups = list(dict.fromkeys(pids))
    # A container's processes die with it, even those that started a session of their
    # own (the runner's shell tool does, to time commands out); remember them now, as
    # they are reparented away from the group once its leader exits.
    strays = descendants(groups)
    for pid in groups:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(pid) for pid in groups):
        time.sleep(0.05)
    strays |= descendants(groups)
    for pid in groups:
        _signal_group(pid, signal.SIGKILL)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    # SIGKILL is delivered asynchronously; callers expect the processes gone on return.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(pid) for pid in groups):
        time.sleep(0.05)


def descendants(roots: Iterable[int]) -> set[int]:
    """Every live process below the given ones, found through /proc's parent links."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name may hold spaces and parentheses: fields follow the last ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
