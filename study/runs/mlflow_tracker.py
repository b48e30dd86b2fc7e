"""MLflow as a tracker: the run's params and metric history in an MLflow run, resumed by id.

- Store: see study.runs.mlflow_store ($MLFLOW_TRACKING_URI, else `{run}/mlruns/mlflow.db`).
- Experiment: the project name (`--wandb-project`, the same project as wandb); the run is
  named after the flowctl run, tagged `group`, `status` and `flowctl.run_dir`.
- Params: the masked config, flattened (`stages` as JSON). MLflow params cannot change, so a
  value a resume changes (`--epochs 40`) is recorded as the tag `override.{key}`.
- Metrics: every row at step=global_step, written in order by one background thread (a
  SQLite commit costs milliseconds; the training loop never waits for it), drained by
  `finish`. A killed process loses at most the rows still queued: on resume the same MLflow
  run continues, `skip_through_step` is the last step the store really has, and the
  recorder replays the rest from metrics.csv, so steps never go back and none is missing.
- End: tag `status` (finished, early_stopped, failed, preempted), `exit_code`, the error as
  the run's note, and MLflow's own status FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from study.runs import mlflow_store as store
from study.runs.tracker import GuardedTracker, numeric_items

log = logging.getLogger("flowctl")

# run.json's final status -> MLflow's RunStatus name.
MLFLOW_END_STATUS = {"finished": "FINISHED", "early_stopped": "FINISHED", "failed": "FAILED",
                     "preempted": "KILLED"}
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
NOTE_TAG = "mlflow.note.content"  # shown as the run's description in the MLflow UI


class MlflowTracker(GuardedTracker):
    """One MLflow run per flowctl run; `run_id` goes into run.json as `mlflow_run_id`."""

    name = "mlflow"

    def __init__(self) -> None:
        super().__init__()
        self.client = None
        self.run_id: str | None = None
        self.uri: str | None = None
        self.last_step = -1  # the highest step handed to the writer
        self._rows: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.client is not None

    def teardown(self) -> None:
        self.client = None

    # -- start -----------------------------------------------------------------------------
    def start(self, *, project: str, group: str, name: str, config: dict[str, Any],
              run_dir: Path, run_id: str | None, resume_step: int | None = None) -> str | None:
        """Open (or continue `run_id`) and start the writer; returns the MLflow run id, or
        `run_id` unchanged when MLflow is unavailable (a later resume may still continue it)."""
        run_dir = Path(run_dir)
        self.uri = store.tracking_uri(run_dir)
        self.client = self.guard("init", store.open_client, self.uri)
        opened = self.client and self.guard("init", self._open_run, project, group, name,
                                            config, run_dir, run_id)
        if not opened:
            return run_id
        self.run_id = opened
        self._writer = threading.Thread(target=self._write_rows, name="mlflow-writer", daemon=True)
        self._writer.start()
        return self.run_id

    def _open_run(self, project, group, name, config, run_dir: Path, run_id) -> str:
        params = store.flatten_params(config)
        existing = store.find_run(self.client, run_id) if run_id else None
        if existing is not None:
            self._continue(existing, params)
            return run_id
        if run_id:
            log.warning("mlflow run %s is not in %s; starting a new MLflow run (its history is "
                        "replayed from metrics.csv)", run_id, self.uri)
        local = self.uri == store.local_uri(run_dir)
        artifacts = str(run_dir.resolve() / store.LOCAL_STORE / store.LOCAL_ARTIFACTS) if local else None
        experiment = store.experiment_id(self.client, project, artifacts)
        run = self.client.create_run(experiment, run_name=name, tags={
            "group": group, "status": "running", "flowctl.run_dir": str(run_dir.resolve())})
        for batch in store.param_batches(params):
            self.client.log_batch(run.info.run_id, params=batch)
        return run.info.run_id

    def _continue(self, run, params: dict[str, str]) -> None:
        """Reopen an earlier segment's run: status RUNNING, new params, changed ones as tags."""
        from mlflow.entities import RunTag

        run_id = run.info.run_id
        self.client.update_run(run_id, status="RUNNING")
        known = run.data.params
        new = {key: value for key, value in params.items() if key not in known}
        tags = [RunTag(f"override.{key}", value) for key, value in params.items()
                if key in known and known[key] != value]
        for batch in store.param_batches(new):
            self.client.log_batch(run_id, params=batch)
        self.client.log_batch(run_id, tags=[*tags, RunTag("status", "running")])
        self.skip_through_step = store.last_history_step(self.client, run)
        self.last_step = self.skip_through_step

    # -- log -------------------------------------------------------------------------------
    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Queue one row (steps at or below `skip_through_step` are already stored)."""
        if not self.active or self.run_id is None or step <= self.skip_through_step:
            return
        values = numeric_items(metrics)
        if values:
            self.last_step = max(self.last_step, step)
            self._rows.put((step, int(time.time() * 1000), values))

    def _write_rows(self) -> None:
        """The writer thread: queued rows in order, as many per log_batch as fit."""
        from mlflow.entities import Metric

        done = False
        while not done:
            rows = [self._rows.get()]
            count = len(rows[0][2]) if rows[0] is not None else 0
            while rows[-1] is not None and count < MAX_METRICS_PER_BATCH // 2:
                try:
                    rows.append(self._rows.get_nowait())
                except queue.Empty:
                    break
                count += len(rows[-1][2]) if rows[-1] is not None else 0
            done = rows[-1] is None
            metrics = [Metric(key, value, stamp, step) for step, stamp, values in rows[:len(rows) - done]
                       for key, value in values.items()]
            if metrics and self.active:
                self.guard("log", self.client.log_batch, self.run_id, metrics=metrics)

    def drain(self) -> None:
        """Wait until every queued row is written (or dropped after a failure)."""
        if self._writer is not None:
            self._rows.put(None)
            self._writer.join()
            self._writer = None

    # -- finish ----------------------------------------------------------------------------
    def finish(self, *, status: str | None = None, exit_code: int = 0,
               summary: dict[str, Any] | None = None, tags: tuple[str, ...] = (),
               notes: str | None = None) -> None:
        """Drain the rows, log the summary at the last step, tag and terminate the run."""
        self.drain()
        if not self.active or self.run_id is None:
            return
        from mlflow.entities import Metric, RunTag

        status = status or "finished"
        summary = summary or {}
        stamp, step = int(time.time() * 1000), max(self.last_step, 0)
        metrics = [Metric(key, value, stamp, step) for key, value in numeric_items(summary).items()]
        run_tags = [RunTag("status", status), RunTag("exit_code", str(exit_code)),
                    *(RunTag(key, str(value)) for key, value in summary.items()
                      if isinstance(value, str)),
                    *(RunTag(tag, "true") for tag in tags)]
        if notes:
            run_tags.append(RunTag(NOTE_TAG, notes))
        self.guard("summary", self.client.log_batch, self.run_id, metrics=metrics, tags=run_tags)
        self.guard("finish", self.client.set_terminated, self.run_id,
                   MLFLOW_END_STATUS.get(status, "FINISHED"))
        self.client = None


def log_eval_to_mlflow(run_dir: Path, metrics: dict[str, Any], *, checkpoint: str | None = None) -> bool:
    """Add `eval/*` to the run's own MLflow run, at the run's last step, when it used MLflow.

    The run comes from run.json (`mlflow_run_id`, and `mlflow_tracking_uri` when it was not
    the run's own store). False when the run has no MLflow run; a missing package or an
    MLflow failure is one warning, never an error. mlflow is imported only when needed.
    """
    from study.errors import UsageError
    from study.runs.status import read_run

    info = read_run(run_dir)
    if not info.mlflow_run_id:
        return False
    uri = store.tracking_uri(Path(run_dir), info.mlflow_tracking_uri)
    try:
        store.check_mlflow_available(uri)
    except UsageError as err:
        log.warning("eval/* not sent to the MLflow run of %s: %s", info.run_name, err)
        return False
    tracker = MlflowTracker()
    tracker.client = tracker.guard("init", store.open_client, uri)
    run = tracker.client and tracker.guard("init", store.find_run, tracker.client, info.mlflow_run_id)
    if not run:
        if tracker.status == "ok":
            log.warning("mlflow run %s is not in %s; eval/* not sent to MLflow",
                        info.mlflow_run_id, uri)
        return False
    from mlflow.entities import Metric, RunTag

    stamp, step = int(time.time() * 1000), info.global_step or 0
    rows = [Metric(f"eval/{key}", value, stamp, step) for key, value in numeric_items(metrics).items()]
    tags = [RunTag("eval.checkpoint", checkpoint)] if checkpoint else []
    tracker.guard("log eval", tracker.client.log_batch, info.mlflow_run_id, metrics=rows, tags=tags)
    return tracker.status == "ok"
