"""The small files beside a run's checkpoints: run.json, metrics.csv and the run lock.

No torch import. run.json is rewritten atomically (temp file + os.replace) so a second
terminal (`flowctl list-runs --watch`) never reads half a file. metrics.csv is append-only
with a fixed header; on resume the rows past the checkpoint are dropped first, so the file
of a resumed run equals the file of a run that never stopped.
"""

from __future__ import annotations

import csv
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

    def truncate_after(self, step: int) -> int:
        """Drop rows with step > `step` (logged before a crash, about to be recomputed).

        Returns the largest step the file held before truncation (-1 if none): anything at
        or below it has already been sent to the tracker and must not be sent again.
        """
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
        self.path.unlink(missing_ok=True)

    def append(self, row: dict[str, Any]) -> None:
        new_file = not self.path.exists()
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow({key: _cell(row.get(key)) for key in METRIC_COLUMNS})


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
    """An exclusive claim on a run folder: a lock file holding pid and host.

    Taken with O_CREAT | O_EXCL so two processes cannot both win. A lock whose process is
    gone (same host, pid not alive) is reclaimed with a warning; a live one is an error.
    """

    def __init__(self, run_dir: Path, run_name: str):
        self.path = run_dir / LOCK_NAME
        self.run_name = run_name
        self.held = False

    def acquire(self, warn=print) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner and _alive(owner):
                    raise UsageError(f"run {self.run_name} is in use by pid {owner['pid']} on host "
                                     f"{owner['host']}; wait for it or stop it first") from None
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
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and "pid" in owner else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


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
