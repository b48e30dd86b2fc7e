"""FlowTrainer: the training loop, written out.

Per step: take a batch x_1, draw x_0, t and eps from seeded generators, let the flow
matcher pair the batch and build (x_t, u_t), regress model(x_t, t) on u_t with MSE, clip,
AdamW step, LR schedule step, EMA update. Every `log_every` steps one log row; at each
epoch end a validation pass on the EMA weights, best/last checkpoints and early stopping.
The loss stays on the device between log steps (no per-step host sync).

Exact resume: every random draw comes from a generator whose state is in the checkpoint,
together with the data position (epoch, batch), the log window and the stage, so a run
that is stopped and resumed ends bit-identical (on CPU) to one that never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from study.errors import RunFailed
from study.flow_matching import state as run_state
from study.flow_matching.config import TrainingConfig
from study.flow_matching.flows import build_flow
from study.flow_matching.progress import SilentProgress
from study.flow_matching.sampler import EpochSampler
from study.flow_matching.stages import plan_stages, stage_for_epoch
from study.flow_matching.utils import EMAModel, get_cosine_schedule_with_warmup
from study.runs.paths import BEST_NAME, LAST_NAME, run_dir
from study.runs.recorder import RunRecorder
from study.runs.tracking import resolve_wandb_mode
from study.signals import GracefulStop, TrainingStopped

log = logging.getLogger("flowctl")


class FlowTrainer:
    """Train `model` (forward(x [B, D], t [B]) -> [B, D]) on `train_ds` with flow matching.

    `train_ds`/`val_ds`: tensors [N, D] (raw values; the trainer normalises with the
    training split's mean/std, or with `stats` when given) or objects with an `x` tensor.
    `train_x0`/`val_x0` [N, D]: pre-coupled sources for x_1 row by row (reflow); otherwise
    x_0 is drawn from `config.source` each step.
    """

    def __init__(self, model, config: TrainingConfig, train_ds, val_ds, device,
                 wandb_project: str = "flow-matching-study", resume_path=None, *,
                 ckpt_root=None, wandb_mode: str | None = None, stats: dict | None = None,
                 dataset_checksum: str = "", progress=None, stop: GracefulStop | None = None,
                 train_x0: torch.Tensor | None = None, val_x0: torch.Tensor | None = None,
                 tensorboard: bool = False, warn=print):
        self.config, self.warn = config, warn
        self.device = torch.device(device)
        self.model = model.to(self.device)
        log.info("model on %s (%d parameters)", self.device, sum(p.numel() for p in model.parameters()))
        train_x, val_x = _as_tensor(train_ds), _as_tensor(val_ds)
        self.stats = stats or run_state.normalization_stats(train_x)
        self.train_x = run_state.normalize(train_x, self.stats).to(self.device)
        self.val_x = run_state.normalize(val_x, self.stats).to(self.device)
        self.train_x0 = None if train_x0 is None else train_x0.to(self.device)
        self.dataset_checksum = dataset_checksum
        self.progress = progress or SilentProgress()
        self.stop = stop or GracefulStop()

        self.sampler = EpochSampler(len(self.train_x), config.batch_size,
                                    seed=run_state.derive_seed(config.seed, "data"))
        self.generators = run_state.make_generators(config.seed, self.device)
        self.stages = plan_stages(config)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay,
                                           **run_state.fast_adamw_options(self.device))
        self.total_steps = config.epochs * self.steps_per_epoch
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, config.warmup_steps, self.total_steps, lr_scale=self._stage_lr_scale)
        self.ema = EMAModel(self.model, decay=config.ema_decay)
        self.val_batch = run_state.fixed_validation_noise(self.val_x, config, self.device, val_x0)

        # Progress counters: `epoch` is the last completed epoch (-1: none yet).
        self.epoch, self.global_step, self.batch_in_epoch = -1, 0, 0
        self.best_loss, self.epochs_without_improvement = math.inf, 0
        self.window = run_state.LogWindow(self.device)
        self.last_train_loss: float | None = None
        self.wandb_run_id: str | None = None
        self.resumed_from: int | None = None
        if resume_path is not None:
            self._resume(Path(resume_path))

        self.run_dir = run_dir(config.name, ckpt_root)
        self.recorder = RunRecorder(self.run_dir, config.name, wandb_project=wandb_project,
                                    wandb_mode=resolve_wandb_mode(wandb_mode),
                                    tensorboard=tensorboard, warn=warn)
        self.wandb_project = wandb_project

    def _stage_lr_scale(self, step: int) -> float:
        return stage_for_epoch(self.stages, step // self.steps_per_epoch).lr_scale

    def _resume(self, path: Path) -> None:
        restored = run_state.restore(self, path)
        self.resumed_from = self.global_step
        stage = stage_for_epoch(self.stages, self.epoch + 1)
        log.info("resuming %s at epoch %d, step %d, stage %r (stage step %d)%s", path,
                 self.epoch + 1, self.global_step, stage.name, self._stage_step(stage),
                 "" if restored.exact else " (legacy checkpoint: exactness not guaranteed)")

    def _stage_step(self, stage) -> int:
        return self.global_step - stage.start_epoch * self.steps_per_epoch

    # -- the loop ------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg = self.config
        self.stop.install()  # before wandb starts: a signal during start-up still stops cleanly
        try:
            self.recorder.open(config=cfg.to_dict(), group=cfg.group, total_epochs=cfg.epochs,
                               resume_step=self.resumed_from, wandb_run_id=self.wandb_run_id)
        except BaseException:
            self.stop.uninstall()
            raise
        self.wandb_run_id = self.recorder.wandb_run_id
        self.progress.start(total_steps=self.total_steps, initial_step=self.global_step,
                            run_name=cfg.name)
        started, status = time.perf_counter(), "finished"
        try:
            for epoch in range(self.epoch + 1, cfg.epochs):
                if cfg.patience and self.epochs_without_improvement >= cfg.patience:
                    status = "early_stopped"
                    break
                stage = stage_for_epoch(self.stages, epoch)
                flow = build_flow(stage.flow, sigma=stage.sigma)
                permutation = self.sampler.start_epoch(self.device)
                for batch_index in range(self.batch_in_epoch, self.steps_per_epoch):
                    rows = permutation[batch_index * cfg.batch_size:(batch_index + 1) * cfg.batch_size]
                    loss, grad_norm = self._train_step(rows, flow, stage)
                    self.global_step += 1
                    self.batch_in_epoch = batch_index + 1
                    self.window.add(loss, grad_norm)

                    row = {}
                    if self.global_step % cfg.log_every == 0:
                        row = self._train_log_row(epoch, stage)
                    epoch_done = self.batch_in_epoch == self.steps_per_epoch
                    if epoch_done:
                        row.update(self._validate_epoch(epoch, stage))
                    if row:  # logged before the checkpoint of this step, never after
                        self.recorder.log(row, self.global_step, self._progress_fields(stage))
                    saved = epoch_done or (cfg.save_every and self.global_step % cfg.save_every == 0)
                    if epoch_done:
                        # best.pt goes in place first: a crash between the two renames
                        # leaves last.pt older, and the resume recomputes (and rewrites) both.
                        improved = self.epochs_without_improvement == 0
                        self._save([BEST_NAME, LAST_NAME] if improved else [LAST_NAME])
                    elif saved:
                        self._save([LAST_NAME])
                    if self.stop.requested:  # set by the signal handler; we save here, not there
                        if not saved:
                            self._save([LAST_NAME])
                        self.recorder.flush()
                        raise TrainingStopped(self.stop.signum)
                self.batch_in_epoch = 0
            self.recorder.flush()  # the last checkpoint is on disk before we call it done
        except TrainingStopped as stopped:
            self.recorder.close("preempted", exit_code=stopped.exit_code,
                                progress=self._progress_fields(None))
            raise
        except BaseException as error:
            self.recorder.close("failed", exit_code=1, error=error,
                                progress=self._progress_fields(None))
            raise
        finally:
            self.stop.uninstall()
            self.progress.close()
        result = self._result(status, time.perf_counter() - started)
        self.recorder.close(status, summary={"final_epoch": result["final_epoch"],
                                             "best_val_loss": result["best_val_loss"],
                                             "checkpoint_path": result["checkpoint_path"]},
                            progress=self._progress_fields(None))
        return result

    def _train_step(self, rows: torch.Tensor, flow, stage) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, gens = self.config, self.generators
        x_1 = run_state.augment_batch(self.train_x[rows], stage, gens["noise"])
        x_0 = (self.train_x0[rows] if self.train_x0 is not None
               else run_state.sample_source(cfg.source, x_1, gens["noise"], gens["source"]))
        t = torch.rand(x_1.shape[0], generator=gens["t"], device=self.device)
        eps = torch.randn(x_1.shape, generator=gens["noise"], device=self.device)
        x_0, x_1 = flow.pair(x_0, x_1, generator=gens["ot"])
        x_t, u_t = flow.path(x_0, x_1, t, eps)
        loss = F.mse_loss(self.model(x_t, t), u_t)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        return loss.detach(), grad_norm

    def _train_log_row(self, epoch: int, stage) -> dict[str, Any]:
        """Mean loss and grad norm over the window; one host sync per `log_every` steps."""
        loss, grad_norm = self.window.mean_and_reset()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise RunFailed(f"non-finite {what} at step {self.global_step}")
        self.progress.update(step=self.global_step, epoch=epoch, total_epochs=self.config.epochs,
                             loss=loss)
        self.last_train_loss = loss
        return {"train/loss": loss, "train/grad_norm": grad_norm,
                "train/lr": self.scheduler.get_last_lr()[0], "epoch": epoch,
                "metrics/stage_id": stage.index}

    def _validate_epoch(self, epoch: int, stage) -> dict[str, Any]:
        """Validate on the EMA weights, track the best and the patience counter."""
        val_loss = self.validate(stage)
        if not math.isfinite(val_loss):
            raise RunFailed(f"non-finite validation loss at step {self.global_step}")
        if val_loss < self.best_loss:
            self.best_loss, self.epochs_without_improvement = val_loss, 0
        else:
            self.epochs_without_improvement += 1
        self.epoch, self.batch_in_epoch = epoch, 0
        self.progress.update(step=self.global_step, epoch=epoch, total_epochs=self.config.epochs,
                             loss=self.last_train_loss, val_loss=val_loss)
        return {"val/loss": val_loss, "val/best_loss": self.best_loss, "epoch": epoch,
                "metrics/stage_id": stage.index}

    @torch.no_grad()
    def validate(self, stage=None) -> float:
        """Mean validation MSE with the EMA weights on fixed x_0, t and eps."""
        stage = stage or stage_for_epoch(self.stages, max(self.epoch, 0))
        flow = build_flow(stage.flow, sigma=stage.sigma)
        pairing = torch.Generator().manual_seed(self.config.seed + run_state.VAL_SEED_OFFSET)
        total = torch.zeros((), device=self.device)
        with self.ema.average_parameters(self.model):
            self.model.eval()
            for x_0, x_1, t, eps in self.val_batch:
                x_0, x_1 = flow.pair(x_0, x_1, generator=pairing)
                x_t, u_t = flow.path(x_0, x_1, t, eps)
                total += F.mse_loss(self.model(x_t, t), u_t, reduction="sum") / u_t.shape[-1]
            self.model.train()
        return (total / len(self.val_x)).item()

    def _save(self, names: list[str]) -> None:
        """Checkpoint the current state, unless it is already non-finite (a diverging run
        between log steps must not overwrite the last good last.pt)."""
        finite = torch.stack([torch.isfinite(self.window.loss_sum),
                              *(torch.isfinite(p).all() for p in self.params)]).all()
        if not finite:  # one host sync per checkpoint
            raise RunFailed(f"non-finite loss at step {self.global_step}")
        self.recorder.save_checkpoint(run_state.checkpoint_payload(self),
                                      [self.run_dir / name for name in names])

    def _progress_fields(self, stage) -> dict[str, Any]:
        stage = stage or stage_for_epoch(self.stages, max(self.epoch, 0))
        return {"epoch": self.epoch + 1, "global_step": self.global_step, "stage": stage.name,
                "train_loss": self.last_train_loss,
                "best_val_loss": self.best_loss if math.isfinite(self.best_loss) else None}

    def _result(self, status: str, elapsed_s: float) -> dict[str, Any]:
        best = self.run_dir / BEST_NAME
        return {"status": status, "epochs_run": self.epoch + 1, "final_epoch": self.epoch,
                "best_val_loss": self.best_loss, "global_step": self.global_step,
                "checkpoint_path": str(best), "last_checkpoint_path": str(self.run_dir / LAST_NAME),
                "elapsed_s": elapsed_s, "wandb_run_id": self.wandb_run_id, "run_dir": str(self.run_dir)}

    def finish(self) -> None:
        """Close logging if `train()` did not (kept for the study's notebooks)."""
        self.recorder.flush()
        self.recorder.tracker.finish()
        self.recorder.metrics.close()
        self.recorder.lock.release()


def _as_tensor(dataset) -> torch.Tensor:
    if isinstance(dataset, torch.Tensor):
        return dataset.float()
    if hasattr(dataset, "x"):
        return dataset.x.float()
    return torch.stack([torch.as_tensor(dataset[i]) for i in range(len(dataset))]).float()
