"""Which trackers a run logs to (`--tracker wandb|mlflow|tensorboard|none`), and the set of
them the recorder drives as one.

Default (no `--tracker`): a fresh run logs to wandb (mode from --wandb-mode / $WANDB_MODE,
offline by default), plus TensorBoard with `--tensorboard` or when the run folder already
has tb/; a resumed run logs to the trackers its run.json lists, so no flag needs repeating.
An explicit `--tracker` list is exactly what is used (`--tensorboard` adds TensorBoard);
`--tracker none` keeps the local files only. Each tracker is guarded on its own: one that
fails is one warning, the others and the local files go on.

The tracker modules (wandb_tracker, mlflow_tracker, tensorboard_tracker) import their
library only when a run starts with them; this module imports none of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from study.errors import UsageError
from study.runs.metrics_log import MetricsLog
from study.runs.tensorboard_tracker import TB_FOLDER, check_tensorboard_available
from study.runs.tracker import END_TAGS, GuardedTracker
from study.runs.wandb_tracker import WANDB_MODES, WandbTracker, resolve_wandb_mode

__all__ = ["TRACKER_NAMES", "WANDB_MODES", "Trackers", "WandbTracker", "check_available",
           "choose_trackers", "parse_tracker_option", "resolve_wandb_mode"]

TRACKER_NAMES = ("wandb", "mlflow", "tensorboard")  # also the order they are driven in
NO_TRACKER = "none"


def parse_tracker_option(values: list[str] | None, *, tensorboard: bool = False) -> tuple[str, ...] | None:
    """`--tracker` values (repeatable, each comma-separated) -> names in TRACKER_NAMES order;
    () for `none`; None when not given (the defaults apply). UsageError for a bad name."""
    if not values:
        return None
    names = {part.strip().lower() for value in values for part in value.split(",") if part.strip()}
    unknown = sorted(names - {*TRACKER_NAMES, NO_TRACKER})
    if unknown or not names:
        raise UsageError(f"unknown --tracker {(unknown or [''])[0]!r}; choose from: "
                         f"{', '.join((*TRACKER_NAMES, NO_TRACKER))} (several: --tracker wandb,mlflow)")
    if NO_TRACKER in names and (len(names) > 1 or tensorboard):
        raise UsageError("--tracker none means local files only; drop it, or drop the other "
                         "trackers" + (" and --tensorboard" if tensorboard else ""))
    return tuple(name for name in TRACKER_NAMES if name in names)


def check_available(names: tuple[str, ...]) -> None:
    """UsageError (one line, with the pip command) if a chosen tracker's package is missing."""
    if "mlflow" in names:
        from study.runs.mlflow_store import check_mlflow_available

        check_mlflow_available()
    if "tensorboard" in names:
        check_tensorboard_available()


def choose_trackers(requested: tuple[str, ...] | None, *, tensorboard: bool,
                    previous: dict[str, Any], run_dir: Path) -> tuple[str, ...]:
    """The trackers of this segment: `requested`, else the ones run.json lists (a resume),
    else wandb plus TensorBoard where tb/ exists and MLflow where a run id is recorded."""
    if requested is not None:
        names = set(requested)
    elif isinstance(previous.get("trackers"), dict):
        names = set(previous["trackers"]) & set(TRACKER_NAMES)
    else:
        names = {"wandb"}
        if (Path(run_dir) / TB_FOLDER).is_dir():
            names.add("tensorboard")
        if previous.get("mlflow_run_id"):
            names.add("mlflow")
    if tensorboard:
        names.add("tensorboard")
    return tuple(name for name in TRACKER_NAMES if name in names)


def without_credentials(uri: str) -> str:
    """`uri` with any user:password@ removed (run.json is not a place for secrets)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class Trackers:
    """The trackers one run segment logs to, driven together.

    `run_ids` maps a tracker to its run id: given ones (the checkpoint's wandb id, run.json's
    MLflow id) are kept for trackers not used this segment, so a later resume can continue.
    """

    def __init__(self, names: tuple[str, ...], *, wandb_mode: str,
                 run_ids: dict[str, str | None] | None = None):
        self.names = names
        self.run_ids = dict(run_ids or {})
        self.wandb_mode = wandb_mode
        self.by_name: dict[str, GuardedTracker] = {name: self._build(name) for name in names}

    def _build(self, name: str) -> GuardedTracker:
        if name == "wandb":
            return WandbTracker(self.wandb_mode)
        if name == "mlflow":
            from study.runs.mlflow_tracker import MlflowTracker

            return MlflowTracker()
        from study.runs.tensorboard_tracker import TensorBoardTracker

        return TensorBoardTracker()

    def start(self, *, project: str, group: str, name: str, config: dict[str, Any],
              run_dir: Path, resume_step: int | None, metrics: MetricsLog) -> None:
        """Start each tracker; after a resume, replay the metrics.csv rows it lacks."""
        for tracker_name, tracker in self.by_name.items():
            run_id = tracker.start(project=project, group=group, name=name, config=config,
                                   run_dir=run_dir, run_id=self.run_ids.get(tracker_name),
                                   resume_step=resume_step)
            if tracker_name != "tensorboard":
                self.run_ids[tracker_name] = run_id
            if resume_step is not None:  # rows a killed process had not yet handed over
                for step, row in metrics.rows_as_metrics(tracker.skip_through_step, resume_step):
                    tracker.log(row, step)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for tracker in self.by_name.values():
            tracker.log(metrics, step)

    def finish(self, *, status: str | None = None, exit_code: int = 0,
               summary: dict[str, Any] | None = None, notes: str | None = None) -> None:
        """Close every tracker (safe to call twice): tagged `failed`/`preempted` by status."""
        for tracker in self.by_name.values():
            tracker.finish(status=status, exit_code=exit_code, summary=summary,
                           tags=END_TAGS.get(status or "", ()), notes=notes)

    def status_fields(self) -> dict[str, Any]:
        """run.json's live tracker fields: each tracker's status (ok, disabled, unavailable)."""
        wandb = self.by_name.get("wandb")
        return {"wandb": wandb.status if wandb else "disabled",
                "trackers": {name: tracker.status for name, tracker in self.by_name.items()}}

    def run_json_fields(self, previous: dict[str, Any]) -> dict[str, Any]:
        """Everything run.json records about trackers when a segment starts."""
        wandb = self.by_name.get("wandb")
        uri = previous.get("mlflow_tracking_uri")
        if "mlflow" in self.by_name:
            env_uri = os.environ.get("MLFLOW_TRACKING_URI")
            uri = without_credentials(env_uri) if env_uri else None
        return {"wandb_run_id": self.run_ids.get("wandb"),
                "wandb_mode": wandb.mode if wandb else "disabled",
                "mlflow_run_id": self.run_ids.get("mlflow"), "mlflow_tracking_uri": uri,
                **self.status_fields()}
