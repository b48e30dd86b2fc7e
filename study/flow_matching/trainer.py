"""FlowTrainer: the training loop, written out, and the state it owns.

Per step: take a batch x_1, draw x_0, t and eps from seeded generators, let the flow
matcher pair the batch and build (x_t, u_t), regress model(x_t, t) on u_t with MSE (over
`grad_accum` micro-batches, forward under autocast), clip, AdamW step at the step's
learning rate, EMA update. Every `log_every` steps one log row; at each epoch end a
validation pass on the EMA weights (every `eval_every` epochs also W2/MMD of samples),
checkpoints and early stopping. The loss stays on the device between log steps (no
per-step host sync).

Exact resume: every random draw comes from a generator whose state is in `state_dict()`,
together with the data position (epoch, batch), the log window and the stage; the learning
rate is a pure function of the step. A run stopped and resumed ends bit-identical (on CPU)
to one that never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch

from study.data.training_data import TrainingData
from study.errors import RunFailed
from study.flow_matching.batches import BatchMaker
from study.flow_matching.checkpointing import Checkpointer
from study.flow_matching.config import TrainingConfig
from study.flow_matching.device import spare_core_pays
from study.flow_matching.distributed import (
    StopAgreement,
    mean_across_ranks,
    rank,
    world_size,
    wrap_model,
)
from study.flow_matching.flows import build_flow
from study.flow_matching.log_window import LogWindow
from study.flow_matching.networks import record_model_class
from study.flow_matching.optim import EMAModel, fast_adamw_options
from study.flow_matching.overlap import ValidationOverlap
from study.flow_matching.precision import Precision
from study.flow_matching.progress import SilentProgress
from study.flow_matching.sample_quality import SampleQuality
from study.flow_matching.schedule import LRSchedule
from study.flow_matching.selection import Selection
from study.flow_matching.stages import plan_stages, stage_for_epoch
from study.flow_matching.update import Update
from study.flow_matching.user_metrics import user_metric
from study.flow_matching.validation import Validator
from study.runs.checkpoint import checkpoint_metadata, read_checkpoint, restore_modules
from study.runs.paths import BEST_NAME, LAST_NAME, run_dir
from study.runs.recorder import RunRecorder
from study.runs.tracking import resolve_wandb_mode
from study.signals import GracefulStop, TrainingStopped

log = logging.getLogger("flowctl")


class FlowTrainer:
    """Train `model` (forward(x [B, D], t [B]) -> [B, D]) with flow matching.

    `FlowTrainer(model, config, train_ds, val_ds, device, wandb_project, resume_path)` is the
    original study's signature: raw splits (tensors [N, D] or objects with an `x` tensor),
    normalised here, and a checkpoint path to resume. flowctl itself builds the parts first
    and calls `FlowTrainer.from_parts`.
    """

    def __init__(self, model, config: TrainingConfig, train_ds, val_ds, device,
                 wandb_project: str = "flow-matching-study", resume_path=None, *,
                 ckpt_root=None, wandb_mode: str | None = None):
        data = TrainingData.prepare(train_ds, val_ds, device=torch.device(device),
                                    normalize=config.normalize)
        recorder = RunRecorder(run_dir(config.name, ckpt_root), config.name,
                               wandb_project=wandb_project, wandb_mode=resolve_wandb_mode(wandb_mode))
        resume = None if resume_path is None else read_checkpoint(resume_path)
        self._assemble(model, config, data, recorder, device, resume=resume,
                       resume_source=resume_path)

    @classmethod
    def from_parts(cls, model, config: TrainingConfig, data: TrainingData, recorder: RunRecorder,
                   device, *, resume: dict[str, Any] | None = None, resume_source=None,
                   progress=None, stop: GracefulStop | None = None, pairing_workers: int = 0,
                   warn=print) -> FlowTrainer:
        """A trainer from built parts; `resume`: a checkpoint payload already read;
        `pairing_workers`: threads solving OT plans of the next batches ahead of the step."""
        trainer = cls.__new__(cls)
        trainer._assemble(model, config, data, recorder, device, resume=resume,
                          resume_source=resume_source, progress=progress, stop=stop,
                          pairing_workers=pairing_workers, warn=warn)
        return trainer

    def _assemble(self, model, config, data, recorder, device, *, resume=None, resume_source=None,
                  progress=None, stop=None, pairing_workers=0, warn=print) -> None:
        self.config, self.data, self.recorder, self.warn = config, data, recorder, warn
        record_model_class(model, config)  # so that the CLI can rebuild a Python API run
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_model = wrap_model(self.model, self.device)  # DDP under torchrun
        parameters = sum(p.numel() for p in model.parameters())
        log.info("model on %s (%d parameters)", self.device, parameters)
        # Work beside the training thread, each with its switch (study/flow_matching/device.py)
        spare_core = functools.partial(spare_core_pays, self.device, world_size(), parameters)
        self.progress = progress or SilentProgress()
        self.stop = stop or GracefulStop()
        self.run_dir = recorder.run_dir

        self.batches = BatchMaker(data, batch_size=config.batch_size, seed=config.seed,
                                  source=config.source, device=self.device, rank=rank(),
                                  world_size=world_size(), pairing_workers=pairing_workers,
                                  draw_ahead=spare_core("FLOWCTL_DRAW_AHEAD"),
                                  micro_batches=config.grad_accum)
        self.stop_agreement = StopAgreement(self.device, every=config.log_every)
        self.stages = plan_stages(config)
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = config.epochs * self.steps_per_epoch
        self.learning_rate = LRSchedule(config, self.stages, self.steps_per_epoch)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.learning_rate(0),
                                           weight_decay=config.weight_decay,
                                           **fast_adamw_options(self.device))
        self.ema = EMAModel(self.model, decay=config.ema_decay, warmup=config.ema_warmup,
                            background=spare_core("FLOWCTL_BACKGROUND_EMA"))
        self.precision = Precision(config.precision, self.device)
        self.update = Update(train_model=self.train_model, model=self.model,
                             optimizer=self.optimizer, ema=self.ema, precision=self.precision,
                             schedule=self.learning_rate, grad_accum=config.grad_accum,
                             grad_clip=config.grad_clip)
        self.validator = Validator(data.val, seed=config.seed, source=config.source,
                                   batch_size=config.batch_size, device=self.device,
                                   val_x0=data.val_x0)
        self.quality = None if not config.eval_every else SampleQuality(
            data.heldout_rows(), data.stats, n=config.eval_samples, seed=config.seed,
            source=config.source, device=self.device, user_metric=user_metric(config))
        self.overlap = ValidationOverlap(self.validator,
                                         enabled=spare_core("FLOWCTL_OVERLAP_VALIDATION"))
        self.checkpoints = Checkpointer(recorder, save_every=config.save_every,
                                        keep_snapshots=config.keep_snapshots,
                                        interval_s=config.checkpoint_interval)

        # Progress counters: `epoch` is the last completed epoch (-1: none yet).
        self.epoch, self.global_step, self.batch_in_epoch = -1, 0, 0
        self.selection = Selection(config.select_by, config.patience)
        self.window = LogWindow(self.device)
        self.last_train_loss: float | None = None
        self.wandb_run_id: str | None = None
        self.resumed_from: int | None = None
        if resume is not None:
            self.load_state_dict(resume, source=resume_source)

    # -- the loop ------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg = self.config
        self.stop.install()  # before wandb starts: a signal during start-up still stops cleanly
        try:
            self.wandb_run_id = self.recorder.open(
                config=cfg.to_dict(), group=cfg.group, total_epochs=cfg.epochs,
                resume_step=self.resumed_from, wandb_run_id=self.wandb_run_id)
        except BaseException:
            self.stop.uninstall()
            raise
        self.progress.start(total_steps=self.total_steps, initial_step=self.global_step,
                            run_name=cfg.name)
        started, status = time.perf_counter(), "finished"
        try:
            for epoch in range(self.epoch + 1, cfg.epochs):
                if self.selection.should_stop():
                    status = "early_stopped"
                    break
                stage = stage_for_epoch(self.stages, epoch)
                flow = build_flow(stage.flow, sigma=stage.sigma)
                self.batches.start_epoch()
                epoch_started = time.perf_counter()
                for batch_index in range(self.batch_in_epoch, self.steps_per_epoch):
                    batch = self.batches.draw(batch_index, stage, flow)
                    loss, grad_norm = self.update(batch, flow, step=self.global_step,
                                                  before_step=self.overlap.wait_for_copies)
                    self.global_step += 1
                    self.batch_in_epoch = batch_index + 1
                    self.window.add(loss, grad_norm)

                    row = {}
                    if self.global_step % cfg.log_every == 0:
                        row = self._train_log_row(epoch, stage)
                    epoch_done = self.batch_in_epoch == self.steps_per_epoch
                    # The signal handler only sets stop.requested: we save here, not there,
                    # and under torchrun every rank stops at the same step.
                    stopping = self.stop_agreement.should_stop(self.stop.requested, self.global_step)
                    due = self.checkpoints.due(step=self.global_step, epoch_done=epoch_done,
                                               stopping=stopping)
                    if self.overlap.pending and (row or epoch_done or due):
                        self._finish_overlapped_epoch()  # logged at its own step, before this one
                    deferred = False
                    if epoch_done:
                        self.epoch, self.batch_in_epoch = epoch, 0
                        seconds = time.perf_counter() - epoch_started
                        deferred = self._may_overlap(epoch, due)
                        if deferred:  # validation runs beside the next epoch's first steps
                            self.overlap.start(
                                self.model, self.ema, epoch=epoch, stage=stage,
                                step=self.global_step, seconds=seconds, row=row,
                                state=self.state_dict(), finite=self._finite())
                            row = {}
                        else:
                            row.update(self._end_epoch(epoch, stage, seconds))
                    if row:  # logged before the checkpoint of this step, never after
                        self.recorder.log(row, self.global_step, self._progress_fields(stage))
                    self.checkpoints.after_step(
                        step=self.global_step, epoch=epoch, epoch_done=epoch_done, due=due,
                        improved=epoch_done and not deferred and self.selection.improved_last,
                        stopping=stopping, state=self.state_dict, finite=self._finite,
                        last=epoch_done and epoch + 1 == cfg.epochs)
                    if stopping:
                        self.recorder.flush()
                        raise TrainingStopped(self.stop.signum or signal.SIGTERM)
                self.batch_in_epoch = 0
            assert not self.overlap.pending, "the last epoch end is never overlapped"
            self.checkpoints.finish(step=self.global_step, state=self.state_dict,
                                    finite=self._finite)
            self.recorder.flush()  # the last checkpoint is on disk before we call it done
        except TrainingStopped as stopped:
            self.recorder.close("preempted", exit_code=stopped.exit_code,
                                progress=self._progress_fields(None))
            raise
        except BaseException as error:
            if self.overlap.pending:  # the last epoch end's row belongs in the failed run's log
                with contextlib.suppress(Exception):
                    self._finish_overlapped_epoch()
            self.recorder.close("failed", exit_code=1, error=error,
                                progress=self._progress_fields(None))
            raise
        finally:
            self.stop.uninstall()
            self.progress.close()
            self.batches.close()
            self.overlap.close()
            self.ema.close()
        result = self._result(status, time.perf_counter() - started)
        self.recorder.close(status, summary={"final_epoch": result["final_epoch"],
                                             "best_val_loss": result["best_val_loss"],
                                             "checkpoint_path": result["checkpoint_path"]},
                            progress=self._progress_fields(None))
        return result

    def _train_log_row(self, epoch: int, stage) -> dict[str, Any]:
        """Mean loss and grad norm over the window; one host sync per `log_every` steps."""
        loss, grad_norm = self.window.mean_and_reset(reduce=mean_across_ranks)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise RunFailed(f"non-finite {what} at step {self.global_step}")
        self.progress.update(step=self.global_step, epoch=epoch, total_epochs=self.config.epochs,
                             loss=loss)
        self.last_train_loss = loss
        row = {"train/loss": loss, "train/grad_norm": grad_norm,
               "train/lr": self.optimizer.param_groups[0]["lr"], "epoch": epoch,
               "metrics/stage_id": stage.index}
        if len(self.stages) > 1:  # each stage's loss also under its own key
            row[f"train/loss/{stage.name}"] = loss
        return row

    def _end_epoch(self, epoch: int, stage, seconds: float,
                   val_loss: float | None = None) -> dict[str, Any]:
        """Validate (unless `val_loss` is given) and every `eval_every` epochs evaluate the
        EMA weights; track the best of the selection metric and the patience counter."""
        cfg = self.config
        val_loss = self.validate(stage) if val_loss is None else val_loss
        if not math.isfinite(val_loss):
            raise RunFailed(f"non-finite validation loss at step {self.global_step}")
        row = {"val/loss": val_loss, "epoch": epoch, "metrics/stage_id": stage.index,
               "epoch_time_s": round(seconds, 4)}
        if self.quality is not None and (epoch + 1) % cfg.eval_every == 0:
            row.update(self.quality(self.model, self.ema))
        self.selection.update(val_loss, row.get("eval/w2"))
        row["val/best_loss"] = self.selection.best_loss
        self.progress.update(step=self.global_step, epoch=epoch, total_epochs=cfg.epochs,
                             loss=self.last_train_loss, val_loss=val_loss)
        return row

    def _may_overlap(self, epoch: int, due: bool) -> bool:
        """Whether epoch `epoch`'s validation may finish during the next epoch: only where its
        result changes nothing before it is collected (no write now, no evaluation, no early
        stop at the next epoch's start, a next epoch to overlap with)."""
        cfg = self.config
        evaluates = self.quality is not None and (epoch + 1) % cfg.eval_every == 0
        return (self.overlap.enabled and not due and not evaluates and epoch + 1 < cfg.epochs
                and not self.selection.may_stop_after_next_update())

    def _finish_overlapped_epoch(self) -> None:
        """Collect the overlapped validation: its row is logged at its own step, and a best
        epoch's state (snapshotted then) becomes the pending best.pt."""
        pending, val_loss = self.overlap.collect()
        row = {**pending.row, **self._end_epoch(pending.epoch, pending.stage, pending.seconds,
                                                val_loss=val_loss)}
        self.recorder.log(row, pending.step, self._progress_fields(pending.stage))
        if self.selection.improved_last:
            pending.state.update(self.selection.state_dict())  # known only now
            self.checkpoints.keep_best(pending.state, step=pending.step,
                                       finite=lambda: pending.finite)

    def validate(self, stage=None) -> float:
        """Mean validation MSE with the EMA weights on fixed x_0, t and eps (its batches
        shared with the validation worker where there is one: the same number)."""
        stage = stage or stage_for_epoch(self.stages, max(self.epoch, 0))
        return self.overlap.loss_now(self.model, self.ema, stage)

    def _finite(self) -> torch.Tensor:
        """Whether the weights and the pending window loss are finite (a device bool)."""
        return torch.stack([torch.isfinite(self.window.loss_sum),
                            *(torch.isfinite(p).all() for p in self.params)]).all()

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs, as one plain dict (the checkpoint)."""
        stage = stage_for_epoch(self.stages, self.epoch + 1)  # the epoch in progress or next
        return {
            **checkpoint_metadata(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "world_size": world_size(),
            "batch_in_epoch": self.batch_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "model_state_dict": self.model.state_dict(),
            "ema_shadow": self.ema.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "optimizer_type": type(self.optimizer).__name__,
            "scheduler_state_dict": self.learning_rate.state_dict(self.global_step),
            "rng_states": self.batches.state_dict(mid_epoch=self.batch_in_epoch > 0),
            **self.selection.state_dict(),  # best_loss, best_score, epochs_without_improvement
            "log_window": self.window.state_dict(),
            "grad_scaler": self.precision.state_dict(),
            "last_train_loss": self.last_train_loss,
            "stage": {"current_stage": stage.index, "stage_name": stage.name,
                      "stage_step": self.global_step - stage.start_epoch * self.steps_per_epoch,
                      "schedule": [s.to_dict() for s in self.stages]},
            "config": self.config.to_dict(),
            "normalization_stats": dict(self.data.stats),
            "dataset_checksum": self.data.checksum,
            "wandb_run_id": self.wandb_run_id,
            "wandb_project": self.recorder.wandb_project,
        }

    def load_state_dict(self, payload: dict[str, Any], *, source=None) -> None:
        """Restore `state_dict()`'s output (or an original study checkpoint) into this trainer.

        `source` names the checkpoint in messages. The LR is re-derived from the step:
        identical for an exact resume, re-planned when `--epochs` was extended.
        """
        source = Path(source) if source is not None else Path("checkpoint")
        self.data.check_checkpoint(payload, source, dataset=self.config.dataset,
                                   steps_per_epoch=self.steps_per_epoch, warn=self.warn)
        restore_modules(payload, source, self.model, self.ema, self.optimizer)
        self.epoch = int(payload["epoch"])
        self.selection.load(payload)
        self.precision.load_state_dict(payload.get("grad_scaler") or {})
        exact = "rng_states" in payload and "global_step" in payload
        self.global_step = int(payload.get("global_step", (self.epoch + 1) * self.steps_per_epoch))
        self.batch_in_epoch = int(payload.get("batch_in_epoch", 0))
        self.wandb_run_id = payload.get("wandb_run_id")
        self.last_train_loss = payload.get("last_train_loss")
        if "log_window" in payload:
            self.window.load_state_dict(payload["log_window"])
        if exact:
            self.batches.load_state_dict(payload["rng_states"])
        else:
            self.warn(f"{source} has no RNG or step state (original study format); resuming with "
                      "defaults, so the result is not guaranteed to match an uninterrupted run")
        self.update.set_learning_rate(self.global_step)
        self.resumed_from = self.global_step
        stage = stage_for_epoch(self.stages, self.epoch + 1)
        log.info("resuming %s at epoch %d of %d, step %d, stage %r (stage step %d)%s", source,
                 self.epoch + 2, self.config.epochs, self.global_step, stage.name,
                 self.global_step - stage.start_epoch * self.steps_per_epoch,
                 "" if exact else " (legacy checkpoint: exactness not guaranteed)")

    # -- reporting -----------------------------------------------------------------------
    @property
    def best_loss(self) -> float:
        """The best validation loss so far (inf before the first validation)."""
        return self.selection.best_loss

    def _progress_fields(self, stage) -> dict[str, Any]:
        stage = stage or stage_for_epoch(self.stages, max(self.epoch, 0))
        return {"epoch": self.epoch + 1, "global_step": self.global_step, "stage": stage.name,
                "train_loss": self.last_train_loss,
                "best_val_loss": self.best_loss if math.isfinite(self.best_loss) else None,
                "lr": self.optimizer.param_groups[0]["lr"], "scheduler": self.config.scheduler.type,
                "dataset": self.data.describe()}

    def _result(self, status: str, elapsed_s: float) -> dict[str, Any]:
        best = self.run_dir / BEST_NAME
        return {"status": status, "epochs_run": self.epoch + 1, "final_epoch": self.epoch,
                "best_val_loss": self.best_loss, "global_step": self.global_step,
                "checkpoint_path": str(best), "last_checkpoint_path": str(self.run_dir / LAST_NAME),
                "elapsed_s": elapsed_s, "wandb_run_id": self.wandb_run_id, "run_dir": str(self.run_dir),
                "scheduler": self.config.scheduler.type,
                "lrs": [group["lr"] for group in self.optimizer.param_groups],
                "dataset": self.data.describe()}

    def finish(self) -> None:
        """Close logging if `train()` did not (kept for the study's notebooks)."""
        self.recorder.finish()
