"""FlowTrainer: the training loop, written out, and the state it owns.

`train()` sets up, runs `_loop()` (epochs of `_step()`s, a log row every `log_every` steps,
`_end_epoch()` for validation, evaluation, best and patience, the checkpoint policy after every
step) and finishes. Every draw comes from a generator whose state is in `state_dict()` and the
LR is a function of the step: a resumed run ends bit-identical (on CPU) to an unbroken one.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from study.data.training_data import TrainingData
from study.errors import RunFailed
from study.flow_matching.batches import BatchMaker, FlowBatch
from study.flow_matching.checkpointing import Checkpointer, all_finite
from study.flow_matching.config import TrainingConfig
from study.flow_matching.flows import build_flow
from study.flow_matching.log_window import LogWindow
from study.flow_matching.networks import record_model_class
from study.flow_matching.optim import EMAModel, fast_adamw_options
from study.flow_matching.precision import Precision
from study.flow_matching.progress import SilentProgress
from study.flow_matching.sample_quality import SampleQuality
from study.flow_matching.schedule import LRSchedule
from study.flow_matching.selection import Selection
from study.flow_matching.stages import plan_stages, stage_for_epoch, stage_state
from study.flow_matching.user_metrics import user_metric
from study.flow_matching.validation import Validator
from study.runs.checkpoint import checkpoint_metadata, restore_modules
from study.runs.paths import BEST_NAME, LAST_NAME
from study.runs.recorder import RunRecorder
from study.runtime import distributed, ranks
from study.signals import GracefulStop, TrainingStopped

log = logging.getLogger("flowctl")


class FlowTrainer:
    """Train `model` (forward(x [B, D], t [B]) -> [B, D]) with flow matching, from built
    parts; `resume`: a checkpoint payload already read (`resume_source` names it);
    `pairing_workers`: threads solving the OT plans of the next batches ahead of the step.
    The study's `FlowTrainer(model, config, train_ds, val_ds, device, ...)` goes to utils.py."""

    def __init__(self, model, config: TrainingConfig, data: TrainingData, recorder: RunRecorder,
                 device, *study_args, resume: dict[str, Any] | None = None, resume_source=None,
                 progress=None, stop: GracefulStop | None = None, pairing_workers: int = 0,
                 warn=print, **study_options):
        if study_args or study_options or not isinstance(data, TrainingData):  # the study's call
            from study.flow_matching.utils import study_trainer_parts
            data, recorder, resume, resume_source = study_trainer_parts(
                config, data, recorder, device, *study_args, **study_options)
        self.config, self.data, self.recorder, self.warn = config, data, recorder, warn
        record_model_class(model, config)  # so that the CLI can rebuild a Python API run
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_model = None  # the module `_step` runs: DDP under torchrun, during train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        log.info("model on %s (%d parameters)", self.device,
                 sum(p.numel() for p in self.model.parameters()))
        self.progress, self.stop = progress or SilentProgress(), stop or GracefulStop()

        self.batches = BatchMaker(data, batch_size=config.batch_size, seed=config.seed,
                                  source=config.source, device=self.device, rank=ranks.rank(),
                                  world_size=ranks.world_size(), pairing_workers=pairing_workers)
        self.stop_agreement = distributed.StopAgreement(self.device, every=config.log_every)
        self.stages = plan_stages(config)
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.learning_rate = LRSchedule(config, self.stages, self.steps_per_epoch)
        self.optimizer = torch.optim.AdamW(self.params, lr=self.learning_rate(0),
                                           weight_decay=config.weight_decay,
                                           **fast_adamw_options(self.device))
        self.ema = EMAModel(self.model, decay=config.ema_decay, warmup=config.ema_warmup)
        self.precision = Precision(config.precision, self.device)
        self.validator = Validator(data.val, seed=config.seed, source=config.source,
                                   batch_size=config.batch_size, device=self.device,
                                   val_x0=data.val_x0)
        self.quality = None if not config.eval_every else SampleQuality(
            data.heldout_rows(), data.stats, n=config.eval_samples, seed=config.seed,
            source=config.source, device=self.device, user_metric=user_metric(config))
        self.checkpoints = Checkpointer(
            recorder, state=self.state_dict,
            finite=lambda: all_finite(self.window.loss_sum, *self.params),  # weights, pending loss
            save_every=config.save_every, keep_snapshots=config.keep_snapshots,
            interval_s=config.checkpoint_interval)

        self.epoch, self.global_step, self.batch_in_epoch = -1, 0, 0  # epoch: the last completed
        self.selection = Selection(config.select_by, config.patience)
        self.window = LogWindow(self.device)
        self.last_train_loss = self.wandb_run_id = self.resumed_from = None  # set as the run goes
        if resume is not None:
            self.load_state_dict(resume, source=resume_source)

    # -- the run -------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Set up, loop, finish; the result dict. A stop request raises TrainingStopped once
        last.pt is written; a failure closes the run as failed and propagates."""
        with self.stop:  # from before wandb starts: a signal during start-up still stops cleanly
            self.wandb_run_id = self.recorder.open(
                config=self.config.to_dict(), group=self.config.group,
                total_epochs=self.config.epochs, resume_step=self.resumed_from,
                wandb_run_id=self.wandb_run_id)
            self.progress.start(total_steps=self.config.epochs * self.steps_per_epoch,
                                initial_step=self.global_step, run_name=self.config.name)
            started = time.perf_counter()
            try:
                self.train_model = distributed.wrap_model(self.model, self.device)
                status = self._loop()
                self.checkpoints.finish(step=self.global_step)
                self.recorder.flush()  # the last checkpoint is on disk before we call it done
            except TrainingStopped as stopped:
                self.recorder.close("preempted", exit_code=stopped.exit_code,
                                    progress=self._progress_fields())
                raise
            except BaseException as error:
                self.recorder.close("failed", exit_code=1, error=error,
                                    progress=self._progress_fields())
                raise
            finally:
                self.progress.close()
                self.batches.close()
                self.train_model = None  # DDP holds the process group: shutdown() frees it
        result = self._result(status, time.perf_counter() - started)
        self.recorder.close(status, summary={key: result[key] for key in (
            "final_epoch", "best_val_loss", "checkpoint_path")}, progress=self._progress_fields())
        return result

    def _loop(self) -> str:
        """The epochs from where the state stands; "finished" or "early_stopped"."""
        cfg = self.config
        for epoch in range(self.epoch + 1, cfg.epochs):
            if self.selection.should_stop():
                return "early_stopped"
            stage = stage_for_epoch(self.stages, epoch)
            flow = build_flow(stage.flow, sigma=stage.sigma)
            self.batches.start_epoch()
            epoch_started = time.perf_counter()
            for batch_index in range(self.batch_in_epoch, self.steps_per_epoch):
                batch = self.batches.draw(batch_index, stage, flow)
                loss, grad_norm = self._step(batch, flow)
                self.global_step += 1
                self.batch_in_epoch = batch_index + 1
                self.window.add(loss, grad_norm)

                logs = self.global_step % cfg.log_every == 0
                row = self._train_log_row(epoch, stage) if logs else {}
                # A signal only sets stop.requested: we save here, and every rank at one step.
                stopping = self.stop_agreement.should_stop(self.stop.requested, self.global_step)
                epoch_done = self.batch_in_epoch == self.steps_per_epoch
                if epoch_done:
                    row.update(self._end_epoch(epoch, stage, time.perf_counter() - epoch_started))
                if row:  # logged before the checkpoint of this step, never after
                    self.progress.update(step=self.global_step, epoch=epoch,
                                         total_epochs=cfg.epochs, loss=self.last_train_loss,
                                         val_loss=row.get("val/loss"))
                    self.recorder.log(row, self.global_step, self._progress_fields(stage))
                self.checkpoints.after_step(
                    step=self.global_step, epoch=epoch, epoch_done=epoch_done,
                    improved=epoch_done and self.selection.improved_last, stopping=stopping,
                    last=epoch_done and epoch + 1 == cfg.epochs)
                if stopping:
                    self.recorder.flush()
                    raise TrainingStopped(self.stop.signum or signal.SIGTERM)
            self.batch_in_epoch = 0
        return "finished"

    def _step(self, batch: FlowBatch, flow) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on `batch`; (loss, grad norm) as device scalars. `grad_accum`
        micro-batches: their mean gradient is the batch's (under DDP all-reduced on the last)."""
        parts = self.config.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        loss = None
        for index, part in enumerate(batch.split(parts)):
            x_t, u_t = flow.path(part.x_0, part.x_1, part.t, part.eps)
            with distributed.gradient_sync(self.train_model, index == parts - 1):
                with self.precision.autocast():
                    v_t = self.train_model(x_t, part.t)
                part_loss = F.mse_loss(v_t.float(), u_t) / parts
                self.precision.backward(part_loss)
            loss = part_loss.detach() if loss is None else loss + part_loss.detach()
        grad_norm = self.precision.clip_and_step(self.optimizer, self.params, self.config.grad_clip)
        self.learning_rate.apply(self.optimizer, self.global_step + 1)  # for the next step
        self.ema.update(self.model, n=self.global_step)
        return loss, grad_norm

    def _train_log_row(self, epoch: int, stage) -> dict[str, Any]:
        """Mean loss and grad norm over the window; one host sync per `log_every` steps."""
        loss, grad_norm = self.window.mean_and_reset(self.global_step,
                                                     reduce=distributed.mean_across_ranks)
        self.last_train_loss = loss
        row = {"train/loss": loss, "train/grad_norm": grad_norm,  # lr: the window's last step's
               "train/lr": self.learning_rate(self.global_step - 1), "epoch": epoch,
               "metrics/stage_id": stage.index}
        if len(self.stages) > 1:  # each stage's loss also under its own key
            row[f"train/loss/{stage.name}"] = loss
        return row

    def _end_epoch(self, epoch: int, stage, seconds: float) -> dict[str, Any]:
        """The epoch's row: validation every `val_every` epochs (and the last, and with each
        evaluation), W2/MMD of the EMA weights every `eval_every`, best and patience."""
        cfg = self.config
        self.epoch, self.batch_in_epoch = epoch, 0
        row = {"epoch": epoch, "metrics/stage_id": stage.index, "epoch_time_s": round(seconds, 4)}
        evaluates = self.quality is not None and (epoch + 1) % cfg.eval_every == 0
        if not (evaluates or (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            self.selection.skip()
            return row
        val_loss = self.validate(stage)
        if not math.isfinite(val_loss):
            raise RunFailed(f"non-finite validation loss at step {self.global_step}")
        row["val/loss"] = val_loss
        if evaluates:
            row.update(self.quality(self.model, self.ema))
        self.selection.update(val_loss, row.get("eval/w2"))
        row["val/best_loss"] = self.selection.best_loss
        return row

    def validate(self, stage=None) -> float:
        """Mean validation MSE with the EMA weights on fixed x_0, t and eps."""
        stage = stage or stage_for_epoch(self.stages, max(self.epoch, 0))
        return self.validator.loss(self.model, self.ema, stage)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs, as one plain dict (the checkpoint)."""
        return {
            **checkpoint_metadata(),
            "epoch": self.epoch, "global_step": self.global_step, "world_size": ranks.world_size(),
            "batch_in_epoch": self.batch_in_epoch, "steps_per_epoch": self.steps_per_epoch,
            "stage": stage_state(self.stages, self.epoch, self.global_step, self.steps_per_epoch),
            "model_state_dict": self.model.state_dict(), "ema_shadow": self.ema.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "optimizer_type": type(self.optimizer).__name__,
            "scheduler_state_dict": self.learning_rate.state_dict(self.global_step),
            "grad_scaler": self.precision.state_dict(),
            "rng_states": self.batches.state_dict(mid_epoch=self.batch_in_epoch > 0),
            **self.selection.state_dict(),  # best_loss, best_score, epochs_without_improvement
            "log_window": self.window.state_dict(), "last_train_loss": self.last_train_loss,
            "config": self.config.to_dict(), "normalization_stats": dict(self.data.stats),
            "dataset_checksum": self.data.checksum,
            "wandb_run_id": self.wandb_run_id, "wandb_project": self.recorder.wandb_project,
        }

    def load_state_dict(self, payload: dict[str, Any], *, source=None) -> None:
        """Restore `state_dict()`'s output (`source` names it in messages); the LR follows the
        step (re-planned when `--epochs` grew). A study checkpoint is converted by utils.py."""
        source = Path(source) if source is not None else Path("checkpoint")
        self.data.check_checkpoint(payload, source, dataset=self.config.dataset,
                                   steps_per_epoch=self.steps_per_epoch, warn=self.warn)
        exact = "rng_states" in payload and "global_step" in payload
        if not exact:  # the original study's format: no RNG or step state
            from study.flow_matching.utils import study_checkpoint_state
            payload = study_checkpoint_state(payload, source, self.steps_per_epoch, self.warn)
        restore_modules(payload, source, self.model, self.ema, self.optimizer)
        self.epoch, self.global_step = int(payload["epoch"]), int(payload["global_step"])
        self.batch_in_epoch = int(payload.get("batch_in_epoch", 0))
        self.selection.load(payload)
        self.precision.load_state_dict(payload.get("grad_scaler") or {})
        self.wandb_run_id = payload.get("wandb_run_id")
        self.last_train_loss = payload.get("last_train_loss")
        self.window.load_state_dict(payload.get("log_window"))
        if exact:
            self.batches.load_state_dict(payload["rng_states"])
        self.learning_rate.apply(self.optimizer, self.global_step)
        self.resumed_from = self.global_step
        at = stage_state(self.stages, self.epoch, self.global_step, self.steps_per_epoch)
        log.info("resuming %s at epoch %d of %d, step %d, stage %r (step %d of it)", source,
                 self.epoch + 2, self.config.epochs, self.global_step, at["stage_name"],
                 at["stage_step"])

    # -- reporting -----------------------------------------------------------------------
    @property
    def best_loss(self) -> float:
        """The best validation loss so far (inf before the first validation)."""
        return self.selection.best_loss

    def _progress_fields(self, stage=None) -> dict[str, Any]:
        stage = stage or stage_for_epoch(self.stages, max(self.epoch, 0))
        return {"epoch": self.epoch + 1, "global_step": self.global_step, "stage": stage.name,
                "train_loss": self.last_train_loss,
                "best_val_loss": self.best_loss if math.isfinite(self.best_loss) else None,
                "lr": self.optimizer.param_groups[0]["lr"], "scheduler": self.config.scheduler.type,
                "dataset": self.data.describe()}

    def _result(self, status: str, elapsed_s: float) -> dict[str, Any]:
        folder = self.recorder.run_dir
        return {"status": status, "epochs_run": self.epoch + 1, "final_epoch": self.epoch,
                "best_val_loss": self.best_loss, "global_step": self.global_step,
                "checkpoint_path": str(folder / BEST_NAME), "run_dir": str(folder),
                "last_checkpoint_path": str(folder / LAST_NAME), "elapsed_s": elapsed_s,
                "wandb_run_id": self.wandb_run_id, "scheduler": self.config.scheduler.type,
                "dataset": self.data.describe(), "lrs": [g["lr"] for g in self.optimizer.param_groups]}
