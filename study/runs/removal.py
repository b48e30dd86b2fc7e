"""Deleting a run folder safely: under the run's own lock, never while its trainer lives.

The lock (study.runs.lock.RunLock) is taken first and held while the folder is emptied: a
live trainer holds it for its whole run, so its folder is skipped with the lock's own
message; a trainer that starts meanwhile finds the lock taken and stops with a one-line
error. Under the lock run.json is read again, and a run that changed since the scan (it
was resumed, it finished) is skipped: the rules were judged on what it was. No torch import.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from study.errors import UsageError
from study.runs.lock import RunLock
from study.runs.paths import LOCK_NAME
from study.runs.status import RunInfo, read_run


@dataclass
class Removal:
    """What happened to one run folder: `removed`, `skipped` (in use, changed) or `failed`."""

    action: str
    freed_bytes: int = 0
    note: str | None = None


def remove_run(run: RunInfo) -> Removal:
    """Delete `run`'s folder (as scanned) unless its trainer lives or it changed since, or it
    is (now) a symlink: nothing that deletes follows one."""
    if os.path.islink(run.path) or run.link is not None:
        return Removal("skipped", note=f"{run.path} is a symlink; prune never follows links")
    lock = RunLock(Path(run.path), run.run_name)
    try:
        lock.acquire(warn=lambda _message: None)  # a dead owner's lock is reclaimed silently
    except UsageError as err:
        return Removal("skipped", note=str(err))
    try:
        fresh = read_run(run.path)
        fresh.size_bytes -= _size(lock.path)  # our own lock file was not there to free
        if (fresh.status, fresh.updated_at) != (run.status, run.updated_at):
            return Removal("skipped", note=f"run {run.run_name} changed since the scan (now "
                                           f"{fresh.display_status}); run prune again")
        try:
            _empty_folder(Path(run.path))
        except OSError as err:
            left = read_run(run.path).size_bytes - _size(lock.path)
            return Removal("failed", freed_bytes=max(fresh.size_bytes - left, 0),
                           note=f"could not remove {err.filename or run.path}: {err.strerror or err}")
    finally:
        lock.release()  # unlinks run.lock, the last file
    try:
        os.rmdir(run.path)
    except OSError:  # a new run took the name in the meantime: its folder stays
        pass
    return Removal("removed", freed_bytes=fresh.size_bytes)


def _empty_folder(folder: Path) -> None:
    """Remove everything in `folder` but the lock file. The folder is opened without following
    a symlink (one put in its place since the check fails here with ELOOP/ENOTDIR), and
    everything in it is removed relative to that open folder: links are removed, not followed."""
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        with os.scandir(folder_fd) as entries:
            for entry in entries:
                if entry.name == LOCK_NAME:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.name, dir_fd=folder_fd)
                else:
                    os.unlink(entry.name, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
