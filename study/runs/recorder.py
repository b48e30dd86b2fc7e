"""RunRecorder: every byte a run writes, in one place, and only on the main process.

Checkpoints, run.json, metrics.csv and the trackers (wandb, MLflow, TensorBoard: see
study.runs.tracking) all go through here. Under
torchrun the other ranks get a recorder with `enabled=False` and every method returns at
once, so the trainer never needs an `if rank == 0`. The run lock is taken by `open()`
unless the caller already holds it (flowctl's launch takes it first and keeps it for the
whole run); it is released by `close()` either way.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import study
from study.errors import RunFailed
from study.install import install_mode
from study.runs.checkpoint import (
    prune_snapshots,
    remove_stale_temp_files,
    serialize_into,
    write_atomic,
)
from study.runs.lock import RunLock, utc_now
from study.runs.metrics_log import MetricsLog
from study.runs.status import RunStatusFile
from study.runs.tracking import Trackers, check_available, choose_trackers, resolve_wandb_mode
from study.secrets import mask_secrets, mask_text

RUN_JSON_THROTTLE_S = 2.0


class RunRecorder:
    """Rank-0 I/O of one run. `trackers`: the `--tracker` choice (None: the defaults of
    study.runs.tracking.choose_trackers; (): local files only); `tensorboard` adds TensorBoard;
    `wandb_mode`: --wandb-mode (None: the run's own on a resume, else offline; $WANDB_MODE wins)."""

    def __init__(self, run_dir: Path, run_name: str, *, wandb_project: str, wandb_mode: str | None,
                 enabled: bool = True, tensorboard: bool = False,
                 trackers: tuple[str, ...] | None = None, lock: RunLock | None = None,
                 warn=print):
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.enabled = enabled
        self.wandb_project = wandb_project
        self.wandb_mode = wandb_mode
        self.requested_trackers = trackers
        self.tensorboard = tensorboard
        self.trackers = Trackers((), wandb_mode="disabled")  # chosen by open()
        self.status = RunStatusFile(self.run_dir)
        self.metrics = MetricsLog(self.run_dir)
        self.lock = lock or RunLock(self.run_dir, run_name)
        self.warn = warn
        self.wandb_run_id: str | None = None
        self._writer: threading.Thread | None = None
        self._write_error: BaseException | None = None
        self._written: list[tuple[Path, int, int | None]] = []
        self._clock_start = time.perf_counter()
        self._elapsed_before = 0.0

    # -- lifecycle -----------------------------------------------------------------------
    def open(self, *, config: dict[str, Any], group: str, total_epochs: int,
             resume_step: int | None, wandb_run_id: str | None) -> str | None:
        """Claim the run folder, align metrics.csv with the checkpoint, start the trackers.

        Returns the wandb run id (the given one on resume or without wandb).
        """
        if not self.enabled:
            return wandb_run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.lock.held:
            self.lock.acquire(warn=self.warn)
        try:
            self._open_locked(config, group, total_epochs, resume_step, wandb_run_id)
        except BaseException:
            self.lock.release()
            raise
        return self.wandb_run_id

    def _open_locked(self, config, group, total_epochs, resume_step, wandb_run_id) -> None:
        previous = self.status.load_previous() if resume_step is not None else {}
        names = choose_trackers(self.requested_trackers, tensorboard=self.tensorboard,
                                previous=previous, run_dir=self.run_dir)
        check_available(names)  # before any file changes: a missing package is exit 2
        remove_stale_temp_files(self.run_dir)
        if resume_step is None:
            self.metrics.reset()
        else:
            _, damaged = self.metrics.truncate_after(resume_step)
            if damaged:
                self.warn(f"{self.metrics.path}: dropped {damaged} damaged line(s) "
                          "(not UTF-8, too long or not numbers); the other rows are kept")
            self._elapsed_before = float(previous.get("elapsed_s") or 0.0)
        config = mask_secrets(config)
        group = config.get("group", group)  # the masked value, everywhere it is shown
        wandb_mode = resolve_wandb_mode(self.wandb_mode, previous.get("wandb_mode"))
        self.trackers = Trackers(names, wandb_mode=wandb_mode, run_ids={
            "wandb": wandb_run_id, "mlflow": previous.get("mlflow_run_id")})
        self.trackers.start(project=self.wandb_project, group=group, name=self.run_name,
                            config=config, run_dir=self.run_dir, resume_step=resume_step,
                            metrics=self.metrics)
        tracker_fields = self.trackers.run_json_fields(previous)
        self.wandb_run_id = tracker_fields["wandb_run_id"]
        self.status.data = {
            "run_name": self.run_name, "group": group, "status": "running", "config": config,
            "total_epochs": total_epochs,
            "started_at": previous.get("started_at") or utc_now(), "finished_at": None,
            "pid": os.getpid(), "host": socket.gethostname(), **tracker_fields, "error": None,
            "checkpoints": previous.get("checkpoints", {}), "resumed_from_step": resume_step,
            "flowctl_version": study.__version__, "flowctl_install": install_mode(),
            # Progress from the first write on (the first log row comes seconds later):
            # completed epochs and steps, as the trainer reports them.
            **self._starting_progress(previous, resume_step),
        }
        self.status.update()

    @staticmethod
    def _starting_progress(previous: dict[str, Any], resume_step: int | None) -> dict[str, Any]:
        if resume_step is None:
            return {"epoch": 0, "global_step": 0}
        if previous.get("global_step") == resume_step and isinstance(previous.get("epoch"), int):
            return {"epoch": previous["epoch"], "global_step": resume_step}
        return {"global_step": resume_step}

    def elapsed_s(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._clock_start

    def log(self, row: dict[str, Any], step: int, progress: dict[str, Any]) -> None:
        """One log event: a metrics.csv row, a row for each tracker, a (throttled) run.json."""
        if not self.enabled:
            return
        elapsed = self.elapsed_s()
        self.metrics.append({**row, "step": step, "stage_id": row.get("metrics/stage_id"),
                             "elapsed_s": round(elapsed, 3)})
        self.trackers.log(row, step)
        self.status.update(throttle_s=RUN_JSON_THROTTLE_S, elapsed_s=round(elapsed, 3),
                           **self.trackers.status_fields(), **{**progress, "global_step": step})

    def save_checkpoints(self, jobs: list[tuple[dict[str, Any], list[Path]]], *,
                         keep_snapshots: int = 0) -> None:
        """Write each (payload, paths) in order, on a background thread.

        Each payload must be a snapshot that nothing changes afterwards (the trainer passes
        `checkpoint.snapshot(...)`): serialisation, the temp file, fsync, os.replace and a
        copy per extra path all overlap the next training steps. One batch of writes is
        in flight at a time; a failed write is raised at the next save or at `flush()`. With
        `keep_snapshots`, older epoch-numbered snapshots beyond that many are then removed.
        """
        if not self.enabled:
            return
        self.flush()
        self._writer = threading.Thread(target=self._write, name="checkpoint-writer",
                                        args=(jobs, keep_snapshots))
        self._writer.start()

    def _write(self, jobs: list[tuple[dict[str, Any], list[Path]]], keep_snapshots: int) -> None:
        written = []
        try:
            for payload, paths in jobs:
                write_atomic(paths[0], functools.partial(serialize_into, payload),
                             also=tuple(paths[1:]))
                size = paths[0].stat().st_size
                written += [(path, size, payload.get("global_step")) for path in paths]
            if keep_snapshots:
                prune_snapshots(self.run_dir, keep_snapshots)
        except BaseException as error:  # handed to the main thread by flush()
            self._write_error = error
        self._written = written

    def flush(self) -> None:
        """Wait for the checkpoint being written, raise its error, record it in run.json."""
        if self._writer is None:
            return
        self._writer.join()
        self._writer = None
        if self._write_error is not None:
            error, self._write_error = self._write_error, None
            raise error
        checkpoints = dict(self.status.data.get("checkpoints", {}))
        for path, size, step in self._written:
            if path.name.startswith("epoch-"):
                continue  # snapshots come and go; run.json lists best and last
            checkpoints[path.stem] = {"path": str(path), "size": size, "global_step": step}
        self.status.update(throttle_s=RUN_JSON_THROTTLE_S, checkpoints=checkpoints,
                           elapsed_s=round(self.elapsed_s(), 3))

    def close(self, status: str, *, exit_code: int = 0, error: BaseException | None = None,
              summary: dict[str, Any] | None = None, progress: dict[str, Any] | None = None) -> None:
        """Final run.json state and the trackers' finish; the lock is released last."""
        if not self.enabled:
            return
        try:
            try:
                self.flush()
            except Exception as write_error:  # the trainer flushes first; this is a backstop
                if error is None:
                    status, exit_code, error = "failed", 1, write_error
            error_info = None
            if error is not None:
                message = mask_text(" ".join(str(error).split()) or type(error).__name__)
                error_info = {"type": type(error).__name__, "message": message}
            self.trackers.finish(status=status, exit_code=exit_code, summary=summary,
                                 notes=error_info["message"] if error_info else None)
            try:
                self.status.update(status=status, finished_at=utc_now(), error=error_info,
                                   exit_code=exit_code, elapsed_s=round(self.elapsed_s(), 3),
                                   **self.trackers.status_fields(), **(progress or {}))
            except (OSError, RunFailed):
                if error is None:
                    raise
                # The folder refuses writes (read-only, full): run.json cannot record the
                # failure, and the error to report stays the one that ended the run.
        finally:
            self.finish()

    def finish(self) -> None:
        """Stop writing: the trackers, metrics.csv, then the lock (safe to call twice)."""
        self.trackers.finish()
        self.metrics.close()
        self.lock.release()
