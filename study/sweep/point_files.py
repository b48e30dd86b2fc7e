"""The files a sweep keeps in a point's run folder, beside the trainer's own.

- `sweep.yaml`: the point's full config; every launcher runs
  `flowctl train --config {run}/sweep.yaml --resume auto`, so the command is the same for
  the local launcher, a printed command line and a Slurm array task.
- `sweep.json`: what the sweep saw: the grid, the identity hash, attempts, and the last
  failure (exit code and its one-line error), which run.json cannot hold when the run never
  started (a dataset path that does not exist fails before the trainer writes anything).
- `train.log`: the trainer's stdout and stderr, appended per attempt.
No torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from study.runs.checkpoint import write_atomic
from study.runs.lock import utc_now
from study.runs.paths import RUN_JSON
from study.runs.safe_read import read_json_object
from study.runs.status import write_json_atomic
from study.sweep.grid import Point

POINT_CONFIG = "sweep.yaml"
POINT_RECORD = "sweep.json"
POINT_LOG = "train.log"
ERROR_PREFIX = "error: "


def write_point_config(folder: Path, point: Point) -> Path:
    """Write the point's config (atomically; unchanged content is not rewritten)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / POINT_CONFIG
    text = (f"# flowctl sweep point {point.name} (identity {point.config_hash}); "
            "run it with: flowctl train --config THIS_FILE --resume auto\n"
            + yaml.safe_dump(point.config.to_dict(), sort_keys=False))
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    write_atomic(path, text.encode())
    return path


def read_record(folder: Path) -> dict[str, Any]:
    """sweep.json as a dict ({} when missing or unreadable: it is advisory)."""
    return read_json_object(folder / POINT_RECORD) or {}


def update_record(folder: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into sweep.json and rewrite it atomically; returns the new record."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {**read_record(folder), **fields, "updated_at": utc_now()}
    write_json_atomic(folder / POINT_RECORD, record)
    return record


def record_failure(folder: Path, *, exit_code: int | None, error: str) -> None:
    update_record(folder, failure={"exit_code": exit_code, "error": error, "at": utc_now()})


def mark_failed_before_start(folder: Path, point: Point, error: str) -> None:
    """Give a point that failed before its trainer wrote run.json (bad data path, bad flag)
    a `failed` run.json with the error, so `list-runs` shows it as what it is. Taken under
    the run lock and only when there is still no run.json: never over a trainer's file."""
    from study.errors import UsageError
    from study.runs.lock import RunLock
    from study.runs.status import RunStatusFile
    from study.secrets import mask_secrets

    if (folder / RUN_JSON).exists():
        return
    lock = RunLock(folder, point.name)
    try:
        lock.acquire(warn=lambda _: None)
    except UsageError:  # a live trainer holds it now: its run.json is on the way
        return
    try:
        if not (folder / RUN_JSON).exists():
            now = utc_now()
            RunStatusFile(folder).update(
                run_name=point.name, group=point.config.group, status="failed",
                config=mask_secrets(point.config.to_dict()), total_epochs=point.config.epochs,
                started_at=now, finished_at=now,
                error={"type": "PointFailed", "message": error})
    finally:
        lock.release()


def clear_failure(folder: Path) -> None:
    if read_record(folder).get("failure"):
        update_record(folder, failure=None)


def last_error_line(log_path: Path, offset: int = 0) -> str | None:
    """The last `error: ...` line written to the log after `offset` (without the prefix)."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    errors = [line[len(ERROR_PREFIX):].strip() for line in text.splitlines()
              if line.startswith(ERROR_PREFIX)]
    return errors[-1] if errors else None
