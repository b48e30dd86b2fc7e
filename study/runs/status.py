"""run.json: one schema, its writer (the trainer's RunStatusFile) and its readers. No torch.

The trainer keeps `{root}/{run_name}/run.json` up to date, rewritten atomically (temp file
+ os.replace) so a second terminal never reads half a file. `list-runs` must list 1,000
runs in well under a second, so a scan reads run.json with the json module and sizes
folders with os.scandir, and nothing else.

A run whose run.json says `running` may have died without saying so (SIGKILL, OOM, a lost
node); `display_status` is then `crashed`. A folder whose run.json is missing or unreadable
is shown as `unknown` with a one-line `reason`, never an exception. The schema, its writer
and its readers stay in this one module (~310 lines) so that they cannot drift apart.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.runs.checkpoint import write_atomic
from study.runs.display import format_age
from study.runs.lock import pid_alive, utc_now
from study.runs.paths import BEST_NAME, LAST_NAME, RUN_JSON
from study.runs.safe_read import inside, load_json_object
from study.secrets import mask_secrets

CHECKPOINT_NAMES = (BEST_NAME, LAST_NAME)

# What the trainer writes, then what only a reader can conclude.
RUN_STATUSES = ("running", "finished", "failed", "preempted", "early_stopped")
DISPLAY_STATUSES = (*RUN_STATUSES, "crashed", "unknown")
# A run on another host is presumed dead when run.json has not changed for this long:
# the trainer rewrites it at least every epoch and every log row, far more often than this.
STALE_AFTER_S = 15 * 60

# Keys of `RunInfo.to_json()`, in order; scripts rely on them.
JSON_KEYS = (
    "run_name", "group", "status", "epoch", "total_epochs", "global_step", "stage",
    "train_loss", "best_val_loss", "updated_at", "started_at", "finished_at", "elapsed_s",
    "size_bytes", "path", "reason", "wandb_run_id", "error",
)


@dataclass
class RunInfo:
    """One run folder: run.json's fields plus what the reader concluded.

    `status` is what run.json says (None when unreadable); `display_status` is what to show:
    one of DISPLAY_STATUSES. `reason` explains a `crashed` or `unknown` status in one line.
    """

    run_name: str
    path: Path
    display_status: str
    status: str | None = None
    reason: str | None = None
    group: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    total_epochs: int | None = None
    global_step: int | None = None
    stage: str | None = None
    train_loss: float | None = None
    best_val_loss: float | None = None
    started_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    elapsed_s: float | None = None
    pid: int | None = None
    host: str | None = None
    wandb_run_id: str | None = None
    wandb_mode: str | None = None
    wandb: str | None = None
    mlflow_run_id: str | None = None
    mlflow_tracking_uri: str | None = None
    error: dict[str, Any] | None = None
    checkpoints: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0
    # Seconds since the epoch used for sorting: updated_at, else the folder's mtime.
    sort_time: float = 0.0
    # The folder is a symlink to this target: another name for a folder (nothing deletes
    # through it); a target outside the root is not even read.
    link: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The stable `list-runs --json` object; `status` is the display status."""
        row = {key: json_number(getattr(self, key)) for key in JSON_KEYS if key not in ("status", "path")}
        row["status"] = self.display_status
        row["path"] = str(self.path)
        return {key: row[key] for key in JSON_KEYS}

    def masked_json(self) -> dict[str, Any]:
        """to_json() with credentials masked in the free-text fields (run names stay as they
        are: people copy them into the next command). What `list-runs --json` prints."""
        row = self.to_json()
        row.update(mask_secrets({key: row[key] for key in ("group", "reason", "error")}))
        return row


def json_number(value: Any) -> Any:
    """JSON has no inf/nan (json.loads accepts them, strict parsers do not): map them to None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# The run.json schema: field -> accepted Python types. The writer refuses other fields; the
# reader takes a field of the wrong type as None, so one odd value cannot hide the rest.
RUN_JSON_FIELDS: dict[str, tuple[type, ...]] = {
    "run_name": (str,), "group": (str,), "status": (str,), "config": (dict,),
    "epoch": (int,), "total_epochs": (int,), "global_step": (int,), "stage": (str,),
    "train_loss": (int, float), "best_val_loss": (int, float), "started_at": (str,),
    "updated_at": (str,), "finished_at": (str,), "elapsed_s": (int, float), "pid": (int,),
    "host": (str,), "wandb_run_id": (str,), "wandb_mode": (str,), "wandb": (str,),
    "error": (dict,), "checkpoints": (dict,), "resumed_from_step": (int,),
    "lr": (int, float), "scheduler": (str,), "dataset": (dict,), "exit_code": (int,),
    # {tracker name: ok | disabled | unavailable} of the trackers the run logs to (a resume
    # without --tracker uses the same ones); the MLflow run a resume continues, and its
    # store when that was $MLFLOW_TRACKING_URI rather than the run's own mlruns/.
    "trackers": (dict,), "mlflow_run_id": (str,), "mlflow_tracking_uri": (str,),
    # The flowctl that wrote the run: its version and how it is installed (study.install).
    "flowctl_version": (str,), "flowctl_install": (str,),
}


# The run.json fields a RunInfo holds, computed once: read_run runs 1,000 times per list-runs.
_READ_FIELDS = tuple((key, types) for key, types in RUN_JSON_FIELDS.items()
                     if key in RunInfo.__dataclass_fields__)


class RunStatusFile:
    """The writer of run.json: the live status of one run, merged and rewritten on update.

    Credentials anywhere in it (config, group, error message) are masked on the way to disk.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RUN_JSON
        self.data: dict[str, Any] = {}
        self._last_write = 0.0

    def load_previous(self) -> dict[str, Any]:
        """The run.json left by an earlier segment of this run ({} if none or unreadable)."""
        raw, _ = _load_run_json(os.fspath(self.path), has_checkpoint=False)
        return raw or {}

    def update(self, *, throttle_s: float = 0.0, **fields: Any) -> None:
        """Merge `fields` and rewrite, unless the last write was under `throttle_s` ago."""
        unknown = sorted(set(fields) - set(RUN_JSON_FIELDS))
        assert not unknown, f"expected run.json fields, got {unknown}"
        self.data.update(fields)
        now = time.monotonic()
        if throttle_s and now - self._last_write < throttle_s:
            return
        self.data["updated_at"] = utc_now()
        write_json_atomic(self.path, mask_secrets(self.data))
        self._last_write = now


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON so that readers only ever see a complete file: the one atomic
    writer (study.runs.checkpoint.write_atomic: temp file, fsync, rename; a failed write
    leaves no temp file and raises RunFailed naming the file)."""
    write_atomic(path, json.dumps(data, indent=1, default=str).encode())


def scan_runs(root: str | os.PathLike, *, now: float | None = None,
              reader: Callable[..., RunInfo] | None = None) -> list[RunInfo]:
    """Every sub-folder of `root` as a RunInfo, newest update first. [] if root is missing;
    UsageError if it cannot be read.

    Folders whose name starts with "." are skipped (editor and sync tool litter). A symlink
    to a folder outside the root is listed as `unknown` and not read: nothing outside the
    root is read. `reader(folder, now=, hostname=)` reads one folder: read_run unless given
    (`flowctl ui` passes one that remembers unchanged folders between its polls).
    """
    reader = reader or read_run
    now = time.time() if now is None else now
    hostname = socket.gethostname()
    try:
        with os.scandir(root) as entries:
            folders = [e.path for e in entries if _is_dir(e) and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise UsageError(f"cannot read checkpoint root {root}: {err.strerror or err}") from None
    root_real = os.path.realpath(root)
    runs = [reader(folder, now=now, hostname=hostname) if inside(root_real, folder)
            else _outside_link(folder) for folder in folders]
    runs.sort(key=lambda run: (run.sort_time, run.run_name), reverse=True)
    return runs


def read_run(run_dir: str | os.PathLike, *, now: float | None = None,
             hostname: str | None = None) -> RunInfo:
    """One run folder as a RunInfo; never raises for a bad or missing run.json."""
    now = time.time() if now is None else now
    run_dir = os.fspath(run_dir)  # plain strings: pathlib costs ~30% of a 1,000-run scan
    size_bytes, has_checkpoint = _folder_size(run_dir)
    try:
        folder_mtime = os.stat(run_dir).st_mtime
    except OSError:
        folder_mtime = 0.0
    info = RunInfo(run_name=os.path.basename(run_dir), path=Path(run_dir),
                   display_status="unknown", size_bytes=size_bytes, sort_time=folder_mtime,
                   link=_link_target(run_dir))

    raw, problem = _load_run_json(os.path.join(run_dir, RUN_JSON), has_checkpoint)
    if raw is None:
        info.reason = problem
        return info
    for key, types in _READ_FIELDS:
        value = raw.get(key)
        if isinstance(value, types) and not isinstance(value, bool):
            setattr(info, key, value)
    updated = parse_time(info.updated_at)
    if updated is not None:
        info.sort_time = updated

    if info.status not in RUN_STATUSES:
        info.reason = f"run.json has an unrecognised status {raw.get('status')!r}"
        return info
    info.display_status = info.status
    if info.status == "running":
        crash_reason = _crash_reason(info, updated, now, hostname or socket.gethostname())
        if crash_reason:
            info.display_status, info.reason = "crashed", crash_reason
    return info


def _load_run_json(path: str, has_checkpoint: bool) -> tuple[dict[str, Any] | None, str]:
    raw, problem = load_json_object(path)
    if raw is None and problem == f"{RUN_JSON} missing" and has_checkpoint:
        problem += " (checkpoints present)"
    return raw, problem


def _link_target(folder: str) -> str | None:
    try:
        return os.readlink(folder)
    except OSError:  # not a symlink
        return None


def _outside_link(folder: str) -> RunInfo:
    """A root entry that is a symlink to a folder outside the root: listed, never read."""
    return RunInfo(run_name=os.path.basename(folder), path=Path(folder), display_status="unknown",
                   link=_link_target(folder),
                   reason="a symlink to a folder outside the checkpoint root (not read)")


def _crash_reason(info: RunInfo, updated: float | None, now: float, hostname: str) -> str | None:
    """Why a run that says `running` is in fact dead, or None if it may be alive."""
    if info.host == hostname and info.pid is not None and info.pid > 0:
        if not pid_alive(info.pid):
            return f"pid {info.pid} is no longer running on {hostname}"
        return None
    # Another host (or no pid to check): only the age of the last update can tell.
    if updated is not None and now - updated > STALE_AFTER_S:
        where = f"host {info.host}" if info.host else "its host"
        return f"no update from {where} for {format_age(now - updated)}"
    return None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _folder_size(folder: str) -> tuple[int, bool]:
    """(total bytes of regular files under folder, whether best.pt or last.pt is among them)."""
    total, has_checkpoint = 0, False
    stack = [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                            has_checkpoint = has_checkpoint or entry.name in CHECKPOINT_NAMES
                    except OSError:  # vanished mid-scan: a trainer replacing a file
                        continue
        except OSError:
            continue
    return total, has_checkpoint


def parse_time(stamp: str | None) -> float | None:
    """ISO 8601 -> seconds since the epoch; naive stamps are taken as UTC. None if unparseable."""
    if not stamp:
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
