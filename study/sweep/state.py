"""The state of each point of a grid, read from its run folder (run.json, sweep.json). No torch.

States, and what `flowctl sweep` does with each:
    pending        no run yet (or a finished run to extend to more epochs): start it
    running        a live process trains it (this sweep, another one, or by hand): wait
    finished, early_stopped                                                  done: skip
    preempted      stopped by a signal, last.pt written: resume it
    crashed        run.json says running but its process is gone: resume it
    failed         its last attempt failed: only with --retry-failed
    conflict       the point's run folder holds a run of another config (same name, another
                   identity): never this point's result, whatever that run's status; the
                   sweep refuses it rather than mix two experiments in one folder
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.runs.lock import pid_alive
from study.runs.paths import (
    BEST_NAME,
    EVAL_JSON,
    LAST_NAME,
    LOCK_NAME,
    RUN_JSON,
    checkpoint_root,
    run_dir,
)
from study.runs.safe_read import inside, read_json_object
from study.runs.status import RunInfo, json_number, parse_time, read_run
from study.sweep.grid import Point
from study.sweep.identity import identity_diff
from study.sweep.point_files import read_record

DONE_STATES = ("finished", "early_stopped")
RESUMABLE_STATES = ("pending", "preempted", "crashed")
STATE_ORDER = ("finished", "early_stopped", "running", "pending", "preempted", "crashed", "failed",
               "conflict")


@dataclass
class PointState:
    point: Point
    state: str
    folder: Path
    run: RunInfo | None = None
    error: str | None = None  # the one-line error of a failed point
    detail: str | None = None  # e.g. "extend to 8 epochs", "pid 12 on host h"
    conflict: str | None = None  # why the run folder is not this point's run
    eval: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.state in DONE_STATES

    def to_json(self) -> dict[str, Any]:
        run = self.run
        return {
            "point": self.point.name, "state": self.state, "config_hash": self.point.config_hash,
            "values": self.point.values,
            "epoch": run.epoch if run else None,
            "total_epochs": run.total_epochs if run else self.point.config.epochs,
            "train_loss": json_number(run.train_loss) if run else None,
            "best_val_loss": json_number(run.best_val_loss) if run else None,
            "elapsed_s": run.elapsed_s if run else None,
            "eval": self.eval, "error": self.error, "detail": self.detail,
            "conflict": self.conflict, "path": str(self.folder),
        }


def read_point_state(point: Point, root: str | Path | None = None) -> PointState:
    """What is on disk for `point`, as one of the states above."""
    folder = run_dir(point.name, root)
    if folder.is_symlink() and not inside(os.path.realpath(checkpoint_root(root)), str(folder)):
        why = "its run folder is a symlink out of the checkpoint root (not read)"
        return PointState(point=point, state="conflict", folder=folder, conflict=why, detail=why)
    if not os.path.isdir(folder):  # never started, as most points of a new grid: one stat
        return PointState(point=point, state="pending", folder=folder)
    run = read_run(folder) if (folder / RUN_JSON).is_file() else None
    has_checkpoint = any((folder / name).is_file() for name in (BEST_NAME, LAST_NAME))
    state = PointState(point=point, state="pending", folder=folder, run=run,
                       eval=read_json_object(folder / EVAL_JSON))
    if run is not None and run.config and (has_checkpoint or run.display_status == "running"):
        differences = identity_diff(run.config, point.config.to_dict())
        if differences:
            state.conflict = "; ".join(differences)
            state.state = "conflict"
            state.detail = (f"its run folder holds another config ({state.conflict}); a "
                            f"{run.display_status} run, not this point's")
            return state
    record = read_record(folder)
    failure = _current_failure(record, run)
    if run is None or run.display_status == "unknown":
        if failure:
            state.state, state.error = "failed", failure.get("error")
        elif has_checkpoint:
            state.state, state.detail = "crashed", "checkpoint without a readable run.json"
        elif isinstance(record.get("submitted"), dict):  # queued on Slurm, not started yet
            state.detail = f"submitted as Slurm job {record['submitted'].get('job')}"
        return state
    status = run.display_status
    if status == "running":
        state.state = "running"
        state.detail = f"pid {run.pid} on {run.host}" if run.pid else None
    elif status in DONE_STATES:
        wanted = point.config.epochs
        if status == "finished" and run.total_epochs is not None and run.total_epochs < wanted:
            state.state, state.detail = "pending", f"extend to {wanted} epochs"
        else:
            state.state = status
    elif failure:
        state.state, state.error = "failed", failure.get("error")
    elif status == "failed":
        state.state = "failed"
        state.error = (run.error or {}).get("message") or "failed (no message in run.json)"
    else:  # preempted, crashed
        state.state, state.detail = status, run.reason
    return state


def _current_failure(record: dict[str, Any], run: RunInfo | None) -> dict[str, Any] | None:
    """The sweep's record of a failure, unless run.json was written after it."""
    failure = record.get("failure")
    if not isinstance(failure, dict):
        return None
    if run is not None and run.updated_at:
        failed_at, updated_at = parse_time(failure.get("at")), parse_time(run.updated_at)
        if failed_at is not None and updated_at is not None and updated_at > failed_at:
            return None
    return failure


def lock_is_live(folder: Path) -> bool:
    """Whether a live trainer holds the point's run lock now (it takes the lock before it
    writes run.json and keeps it to the end). On this host the flock tells (read from
    /proc/locks, so we never touch the lock ourselves): a pid that exists proves nothing,
    pids being reused. A lock of another host is taken as live: only that host can tell."""
    try:
        owner = json.loads((folder / LOCK_NAME).read_text())
        pid, host = int(owner["pid"]), owner.get("host")
        stat = os.stat(folder / LOCK_NAME)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False
    if host != socket.gethostname():
        return True
    if not owner.get("flock"):  # written without an flock (no flock on that filesystem)
        return pid_alive(pid)
    try:
        with open("/proc/locks") as handle:
            locks = handle.read()
    except OSError:  # not Linux: the pid is all we have
        return pid_alive(pid)
    # "1: FLOCK  ADVISORY  WRITE 5955 fe:00:2146347 0 EOF" (waiters have "->" in field 2)
    file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    return any(fields[1] == "FLOCK" and fields[5] == file_id
               for fields in map(str.split, locks.splitlines()) if len(fields) > 5)


def read_states(points: list[Point], root: str | Path | None = None) -> list[PointState]:
    return [read_point_state(point, root) for point in points]


def summary_line(states: list[PointState]) -> str:
    """`12 points: 9 finished, 2 running, 1 failed` (states in a fixed order)."""
    counts = Counter(state.state for state in states)
    parts = [f"{counts[name]} {name}" for name in STATE_ORDER if counts[name]]
    noun = "point" if len(states) == 1 else "points"
    return f"{len(states)} {noun}: " + ", ".join(parts)
