"""RunRecorder: every byte a run writes, in one place, and only on the main process.

Checkpoints, run.json, metrics.csv, wandb and TensorBoard all go through here. Under
torchrun the other ranks get a recorder with `enabled=False` and every method returns at
once, so the trainer never needs an `if rank == 0`. The run lock is taken by `open()`
unless the caller already holds it (flowctl's launch takes it first and keeps it for the
whole run); it is released by `close()` either way.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from study.runs.checkpoint import (
    prune_snapshots,
    remove_stale_temp_files,
    serialize,
    write_atomic,
)
from study.runs.lock import RunLock, utc_now
from study.runs.metrics_log import MetricsLog
from study.runs.status import RunStatusFile
from study.runs.tracking import TensorBoardWriter, WandbTracker
from study.secrets import mask_secrets

RUN_JSON_THROTTLE_S = 2.0


class RunRecorder:
    def __init__(self, run_dir: Path, run_name: str, *, wandb_project: str, wandb_mode: str,
                 enabled: bool = True, tensorboard: bool = False, lock: RunLock | None = None,
                 warn=print):
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.enabled = enabled
        self.wandb_project = wandb_project
        self.tracker = WandbTracker(wandb_mode)
        self.status = RunStatusFile(self.run_dir)
        self.metrics = MetricsLog(self.run_dir)
        self.lock = lock or RunLock(self.run_dir, run_name)
        self.warn = warn
        # TensorBoard continues automatically in a run that already has it.
        self.use_tensorboard = tensorboard or (self.run_dir / "tb").is_dir()
        self.tensorboard = None
        self.wandb_run_id: str | None = None
        self._writer: threading.Thread | None = None
        self._write_error: BaseException | None = None
        self._written: list[tuple[Path, int, int | None]] = []
        self._clock_start = time.perf_counter()
        self._elapsed_before = 0.0

    # -- lifecycle -----------------------------------------------------------------------
    def open(self, *, config: dict[str, Any], group: str, total_epochs: int,
             resume_step: int | None, wandb_run_id: str | None) -> str | None:
        """Claim the run folder, align metrics.csv with the checkpoint, start wandb.

        Returns the wandb run id (the given one on resume; None without wandb).
        """
        if not self.enabled:
            return wandb_run_id
        if self.use_tensorboard:
            TensorBoardWriter.check_available()
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
        remove_stale_temp_files(self.run_dir)
        previous = self.status.load_previous() if resume_step is not None else {}
        if resume_step is None:
            self.metrics.reset()
        else:
            self.metrics.truncate_after(resume_step)
            self._elapsed_before = float(previous.get("elapsed_s") or 0.0)
        config = mask_secrets(config)
        group = config.get("group", group)  # the masked value, everywhere it is shown
        if self.use_tensorboard:
            self.tensorboard = TensorBoardWriter(self.run_dir / "tb", resume_step)
        self.wandb_run_id = self.tracker.start(
            project=self.wandb_project, group=group, name=self.run_name, config=config,
            run_dir=self.run_dir, run_id=wandb_run_id)
        if resume_step is not None:
            # Rows up to the checkpoint that wandb lost when the last process died unflushed.
            for step, metrics in self.metrics.rows_as_metrics(self.tracker.skip_through_step,
                                                              resume_step):
                self.tracker.log(metrics, step)
        self.status.data = {
            "run_name": self.run_name, "group": group, "status": "running", "config": config,
            "total_epochs": total_epochs,
            "started_at": previous.get("started_at") or utc_now(), "finished_at": None,
            "pid": os.getpid(), "host": socket.gethostname(),
            "wandb_run_id": self.wandb_run_id, "wandb_mode": self.tracker.mode,
            "wandb": self.tracker.status, "error": None,
            "checkpoints": previous.get("checkpoints", {}), "resumed_from_step": resume_step,
        }
        self.status.update()

    def elapsed_s(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._clock_start

    def log(self, row: dict[str, Any], step: int, progress: dict[str, Any]) -> None:
        """One log event: a metrics.csv row, a wandb history row, a (throttled) run.json."""
        if not self.enabled:
            return
        elapsed = self.elapsed_s()
        self.metrics.append({**row, "step": step, "stage_id": row.get("metrics/stage_id"),
                             "elapsed_s": round(elapsed, 3)})
        self.tracker.log(row, step)
        if self.tensorboard is not None:
            self.tensorboard.log(row, step)
        self.status.update(throttle_s=RUN_JSON_THROTTLE_S, elapsed_s=round(elapsed, 3),
                           wandb=self.tracker.status, **{**progress, "global_step": step})

    def save_checkpoint(self, payload: dict[str, Any], paths: list[Path], *,
                        keep_snapshots: int = 0) -> None:
        """Serialise now (a consistent snapshot), write in the background.

        The write (temp file, fsync, os.replace, a hard link for best.pt) overlaps the next
        training steps. One write is in flight at a time; a failed write is raised at the
        next save or at `flush()`. With `keep_snapshots`, older epoch-numbered snapshots
        beyond that many are removed once the write succeeded.
        """
        if not self.enabled:
            return
        data = serialize(payload)
        self.flush()
        self._writer = threading.Thread(target=self._write, name="checkpoint-writer",
                                        args=(data, paths, payload.get("global_step"),
                                              keep_snapshots))
        self._writer.start()

    def _write(self, data: bytes, paths: list[Path], step: int | None, keep_snapshots: int) -> None:
        try:
            write_atomic(paths[0], data, also=tuple(paths[1:]))
            if keep_snapshots:
                prune_snapshots(self.run_dir, keep_snapshots)
        except BaseException as error:  # handed to the main thread by flush()
            self._write_error = error
        else:
            self._written = [(path, len(data), step) for path in paths]

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
        """Final run.json state and wandb finish; the lock is released last."""
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
                message = " ".join(str(error).split()) or type(error).__name__
                error_info = {"type": type(error).__name__, "message": message}
            tags = {"failed": ("failed",), "preempted": ("preempted",)}.get(status, ())
            self.tracker.finish(exit_code=exit_code, summary=summary, tags=tags,
                                notes=error_info["message"] if error_info else None,
                                preempting=status == "preempted")
            self.status.update(status=status, finished_at=utc_now(), error=error_info,
                               exit_code=exit_code,
                               elapsed_s=round(self.elapsed_s(), 3), wandb=self.tracker.status,
                               **(progress or {}))
        finally:
            self.finish()

    def finish(self) -> None:
        """Stop writing: wandb, metrics.csv, TensorBoard, then the lock (safe to call twice)."""
        self.tracker.finish()
        self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        self.lock.release()
