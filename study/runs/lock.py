"""The run lock: one live process per run folder.

`{run}/run.lock` holds the owner's pid and host, with an flock on it for as long as the run
lives. No torch import.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.runs.paths import LOCK_NAME


def utc_now() -> str:
    """The current time as ISO 8601 in UTC (the stamps of run.json and run.lock)."""
    return datetime.now(timezone.utc).isoformat()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


class RunLock:
    """An exclusive claim on a run folder: the file run.lock (pid, host) with an flock on it.

    The flock is held for as long as the run lives and the kernel drops it when the process
    dies, however it dies (SIGKILL, OOM): on this host a lock file that nobody holds is
    stale whatever pid it names, pids being reused (a restarted container's flowctl is
    often the same small pid). Checking, reclaiming and writing all happen under the flock,
    so two processes can never both reclaim a stale lock, nor see a half-written one. A lock
    written on another host, or without an flock (by hand, or on a filesystem without
    flock), is judged by its pid as before: alive unless it is on this host and gone.
    """

    def __init__(self, run_dir: Path, run_name: str):
        self.path = run_dir / LOCK_NAME
        self.run_name = run_name
        self.held = False
        self._fd: int | None = None

    def acquire(self, warn=print) -> None:
        for _ in range(5):
            if self.path.parent.exists() and not self.path.parent.is_dir():
                raise UsageError(f"{self.path.parent} is a file, not a run folder; move it "
                                 "away or choose another run name")
            if self.path.parent.is_symlink():  # what takes the lock writes and deletes there
                raise UsageError(f"{self.path.parent} is a symlink (to "
                                 f"{os.readlink(self.path.parent)}); flowctl writes and deletes "
                                 "only in real run folders: use the folder it points to")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:  # never through a symlink: the pid would be written into its target
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except FileNotFoundError:  # the folder was removed as we opened: make it again
                continue
            except OSError as err:
                if err.errno != errno.ELOOP:
                    raise
                raise UsageError(f"{self.path} is a symlink, not a lock file; remove it "
                                 f"(rm {self.path}) if no run uses it") from None
            try:
                claimed = self._claim(fd, warn)
            except BaseException:
                os.close(fd)
                raise
            if claimed is None:  # no flock here: the pid check alone, as before
                os.close(fd)
                return self._acquire_without_flock(warn)
            if claimed:
                self._fd, self.held = fd, True
                return
            os.close(fd)  # the holder removed the file as we opened it: try the new one
        raise UsageError(f"could not take the lock {self.path}; another process keeps taking it")

    def _claim(self, fd: int, warn) -> bool | None:
        """Lock `fd` and write our pid into it: True, False (retry), None (no flock)."""
        locked = _flock(fd)
        if locked is None:
            return None
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        owner = _parse_owner(text)
        if not locked:
            raise UsageError(self._in_use(owner))
        if not _is_current(fd, self.path):
            return False
        if owner is not None and not _stale_under_flock(owner):
            raise UsageError(self._in_use(owner))
        if text.strip():
            warn(f"reclaiming the lock of run {self.run_name} left by a dead process "
                 f"({owner or 'unreadable lock file'})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": utc_now(), "flock": True}).encode(), 0)
        return True

    def _in_use(self, owner: dict[str, Any] | None) -> str:
        who = f"pid {owner['pid']} on host {owner.get('host')}" if owner else "another process"
        return f"run {self.run_name} is in use by {who}; wait for it or stop it first"

    def _acquire_without_flock(self, warn) -> None:
        """For filesystems without flock: create with O_EXCL, reclaim a dead pid's lock."""
        with contextlib.suppress(OSError):
            if self.path.stat().st_size == 0:  # the empty file our flock attempt created
                self.path.unlink()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner and _alive(owner):
                    raise UsageError(self._in_use(owner)) from None
                warn(f"reclaiming the lock of run {self.run_name} left by a dead process "
                     f"({owner or 'unreadable lock file'})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": utc_now()}, handle)
            self.held = True
            return
        raise UsageError(f"could not take the lock {self.path}; another process keeps taking it")

    def _owner(self) -> dict[str, Any] | None:
        try:
            return _parse_owner(self.path.read_text())
        except OSError:
            return None

    def release(self) -> None:
        """Remove the lock file and drop the flock. A lock file that cannot be removed (the
        folder became read-only, the disk went away) stays: without our flock the next run
        on this host reclaims it, so it never hides the error that ended the run."""
        if self.held:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)  # before the flock goes: see _is_current
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self.held = False


def _flock(fd: int) -> bool | None:
    """Try to lock `fd` exclusively: True, False (held by another), None (unsupported)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
            return None
        raise
    return True


def _is_current(fd: int, path: Path) -> bool:
    """Whether `fd` is still the file at `path` (a releasing holder unlinks it first)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _parse_owner(text: str) -> dict[str, Any] | None:
    try:
        owner = json.loads(text)
    except (ValueError, RecursionError):  # a lock file nested deep: unreadable, not a crash
        return None
    return owner if isinstance(owner, dict) and "pid" in owner else None


def _stale_under_flock(owner: dict[str, Any]) -> bool:
    """We hold the flock: is the lock file's owner gone? Certainly, if it took the flock on
    this host; otherwise (another host, or a lock written without flock) ask its pid."""
    if owner.get("flock") and owner.get("host") == socket.gethostname():
        return True
    return not _alive(owner)


def _alive(owner: dict[str, Any]) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # cannot check another host's pids: assume it is running
    return pid_alive(int(owner["pid"]))
