"""The small files beside a run's checkpoints: run.json, metrics.csv and the run lock.

No torch import. run.json is rewritten atomically (temp file + os.replace) so a second
terminal (`flowctl list-runs --watch`) never reads half a file. metrics.csv is append-only
with a fixed header; on resume the rows past the checkpoint are dropped first, so the file
of a resumed run equals the file of a run that never stopped.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.paths import LOCK_NAME, METRICS_CSV, RUN_JSON

METRIC_COLUMNS = ("step", "epoch", "stage_id", "train/loss", "train/grad_norm", "train/lr",
                  "val/loss", "val/best_loss", "elapsed_s")
WALL_CLOCK_COLUMNS = ("elapsed_s",)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temp, "w") as handle:
        json.dump(data, handle, indent=1, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


class RunStatusFile:
    """run.json: the live status of one run, merged and rewritten on every update."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / RUN_JSON
        self.data: dict[str, Any] = {}
        self._last_write = 0.0

    def load_previous(self) -> dict[str, Any]:
        """The run.json left by an earlier segment of this run ({} if none or unreadable)."""
        try:
            previous = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return previous if isinstance(previous, dict) else {}

    def update(self, *, throttle_s: float = 0.0, **fields: Any) -> None:
        """Merge `fields` and rewrite, unless the last write was under `throttle_s` ago."""
        self.data.update(fields)
        now = time.monotonic()
        if throttle_s and now - self._last_write < throttle_s:
            return
        self.data["updated_at"] = utc_now()
        write_json_atomic(self.path, self.data)
        self._last_write = now


class MetricsLog:
    """metrics.csv: one row per log event with every column present from the first row."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_CSV
        self._handle = None  # kept open while the run logs; each row is flushed

    def truncate_after(self, step: int) -> int:
        """Drop rows with step > `step` (logged before a crash, about to be recomputed).

        Returns the largest step the file held before truncation (-1 if none).
        """
        self.close()
        if not self.path.exists():
            return -1
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        last_logged = max((int(row["step"]) for row in rows), default=-1)
        kept = [row for row in rows if int(row["step"]) <= step]
        if len(kept) != len(rows):
            temp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            with open(temp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
                writer.writeheader()
                writer.writerows(kept)
            os.replace(temp, self.path)
        return last_logged

    def rows_as_metrics(self, after_step: int, through_step: int) -> list[tuple[int, dict[str, Any]]]:
        """(step, {wandb key: value}) for rows with after_step < step <= through_step."""
        if not self.path.exists():
            return []
        replay = []
        for row in read_metrics(self.path):
            step = int(row["step"])
            if after_step < step <= through_step:
                metrics = {key: float(value) for key, value in row.items()
                           if "/" in key and value != ""}
                metrics["epoch"] = int(row["epoch"])
                metrics["metrics/stage_id"] = int(row["stage_id"])
                replay.append((step, metrics))
        return replay

    def reset(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def append(self, row: dict[str, Any]) -> None:
        if self._handle is None:
            new_file = not self.path.exists()
            self._handle = open(self.path, "a", newline="")  # noqa: SIM115 (closed by close())
            self._writer = csv.DictWriter(self._handle, fieldnames=METRIC_COLUMNS,
                                          extrasaction="ignore")
            if new_file:
                self._writer.writeheader()
        self._writer.writerow({key: _cell(row.get(key)) for key in METRIC_COLUMNS})
        self._handle.flush()  # a second terminal (or a crash) sees every row written so far

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
        if self.held:
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
    except ValueError:
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
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
