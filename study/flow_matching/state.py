"""A run's state beyond the weights: generators, normalisation, the log window, and how
all of it goes into a checkpoint and comes back.

Kept apart from trainer.py so the loop stays short; everything the checkpoint must hold
for an exact resume is listed in `checkpoint_payload` and undone in `restore`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from study.errors import UsageError
from study.flow_matching.checkpoint import build_checkpoint, read_checkpoint, restore_training_state
from study.flow_matching.stages import stage_for_epoch
from study.flow_matching.utils import cosine_warmup_factor

if TYPE_CHECKING:
    from study.flow_matching.trainer import FlowTrainer

log = logging.getLogger("flowctl")

# Each generator gets its own stream: seed << 8 plus a fixed offset per purpose.
GENERATOR_OFFSETS = {"data": 0, "t": 1, "noise": 2, "ot": 3, "source": 4}
VAL_SEED_OFFSET = 200  # fixed validation draws; regenerated from the seed, never saved
DEVICE_GENERATORS = ("t", "noise")  # drawn on the training device; the rest on the CPU


def derive_seed(seed: int, purpose: str) -> int:
    return (seed << 8) + (GENERATOR_OFFSETS[purpose] if purpose in GENERATOR_OFFSETS else VAL_SEED_OFFSET)


def make_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """Seeded generators for t, noise (x_0, eps, augmentation), OT sampling and sources."""
    return {name: torch.Generator(device if name in DEVICE_GENERATORS else "cpu")
            .manual_seed(derive_seed(seed, name))
            for name in GENERATOR_OFFSETS if name != "data"}


def fast_adamw_options(device: torch.device) -> dict[str, Any]:
    """fused=True runs the whole AdamW update in one kernel (~1.6x the default on CPU)."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


def normalization_stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"mean", "std"} of x [N, D], the same definition the data package uses."""
    from study.data.dataset import column_stats

    mean, std = column_stats(x)
    return {"mean": mean, "std": std}


def normalize(x: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    return (x - stats["mean"].to(x)) / stats["std"].to(x)


def denormalize(x: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    return x * stats["std"].to(x) + stats["mean"].to(x)


def sample_source(name: str, like: torch.Tensor, generator: torch.Generator,
                  cpu_generator: torch.Generator | None = None) -> torch.Tensor:
    """x_0 with the shape of `like` [B, D]: N(0, I), or a built-in 2-D dataset."""
    if name == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    from study.data.toy import sample_source as sample_builtin

    return sample_builtin(name, like.shape[0], like.shape[1], cpu_generator).to(like)


def augment_batch(x_1: torch.Tensor, stage, generator: torch.Generator) -> torch.Tensor:
    if stage.aug == "none":
        return x_1
    from study.data.augment import augment

    return augment(stage.aug, x_1, std=stage.aug_std, generator=generator)


def fixed_validation_noise(val_x: torch.Tensor, config, device,
                           val_x0: torch.Tensor | None = None) -> list[tuple[torch.Tensor, ...]]:
    """(x_0, x_1, t, eps) batches drawn once from the seed, so val/loss is comparable
    across epochs (and identical on CPU and GPU: drawn on the CPU, then moved).
    `val_x0`: pre-coupled sources (reflow) instead of fresh draws."""
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "val"))
    x_1 = val_x.cpu()
    x_0 = val_x0.cpu() if val_x0 is not None else sample_source(config.source, x_1, generator, generator)
    t = torch.rand(len(x_1), generator=generator)
    eps = torch.randn(x_1.shape, generator=generator)
    size = config.batch_size
    return [tuple(part[i:i + size].to(device) for part in (x_0, x_1, t, eps))
            for i in range(0, len(x_1), size)]


class LogWindow:
    """Sums of loss and grad norm since the last log row, kept on the device."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.grad_norm_sum = torch.zeros((), device=device)
        self.steps = 0

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.loss_sum += loss
        self.grad_norm_sum += grad_norm
        self.steps += 1

    def mean_and_reset(self) -> tuple[float, float]:
        steps = max(self.steps, 1)
        loss, grad_norm = (self.loss_sum / steps).item(), (self.grad_norm_sum / steps).item()
        self.loss_sum.zero_()
        self.grad_norm_sum.zero_()
        self.steps = 0
        return loss, grad_norm

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum.cpu(), "grad_norm_sum": self.grad_norm_sum.cpu(),
                "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum.copy_(state["loss_sum"])
        self.grad_norm_sum.copy_(state["grad_norm_sum"])
        self.steps = int(state["steps"])


def checkpoint_payload(trainer: FlowTrainer) -> dict[str, Any]:
    """Everything an exact resume needs, as one plain dict."""
    mid_epoch = trainer.batch_in_epoch > 0
    stage = stage_for_epoch(trainer.stages, trainer.epoch + 1)  # the epoch in progress or next
    rng_states = {name: gen.get_state() for name, gen in trainer.generators.items()}
    rng_states["data"] = trainer.sampler.state_dict(mid_epoch=mid_epoch)
    return build_checkpoint(
        trainer.epoch, trainer.model, trainer.ema, trainer.optimizer, trainer.scheduler,
        trainer.best_loss, trainer.config, trainer.stats,
        global_step=trainer.global_step, batch_in_epoch=trainer.batch_in_epoch,
        steps_per_epoch=trainer.steps_per_epoch, rng_states=rng_states,
        epochs_without_improvement=trainer.epochs_without_improvement,
        log_window=trainer.window.state_dict(), last_train_loss=trainer.last_train_loss,
        stage={"current_stage": stage.index, "stage_name": stage.name,
               "stage_step": trainer.global_step - stage.start_epoch * trainer.steps_per_epoch,
               "schedule": [s.to_dict() for s in trainer.stages]},
        dataset_checksum=trainer.dataset_checksum, wandb_run_id=trainer.wandb_run_id,
        wandb_project=getattr(trainer, "wandb_project", None),
    )


@dataclass
class Restored:
    exact: bool  # False for checkpoints without RNG/step state (the original study format)


def restore(trainer: FlowTrainer, path: Path) -> Restored:
    """Load `path` into a freshly built trainer (model, EMA, optimizer, scheduler, RNG, position)."""
    payload = read_checkpoint(path)
    saved_mean = (payload.get("normalization_stats") or {}).get("mean")
    dim = trainer.train_x.shape[1]
    if saved_mean is not None and saved_mean.numel() != dim:
        raise UsageError(f"dataset {trainer.config.dataset} has dimension {dim} but the "
                         f"checkpoint {path} was trained on dimension {saved_mean.numel()}")
    restore_training_state(payload, path, trainer.model, trainer.ema, trainer.optimizer,
                           trainer.scheduler)
    # Re-derive the LR from the step: identical for an exact resume, re-planned on extension.
    factor = trainer.scheduler.lr_lambdas[0](trainer.scheduler.last_epoch)
    for group, base_lr in zip(trainer.optimizer.param_groups, trainer.scheduler.base_lrs, strict=True):
        group["lr"] = base_lr * factor
    trainer.scheduler._last_lr = [group["lr"] for group in trainer.optimizer.param_groups]

    trainer.epoch = int(payload["epoch"])
    trainer.best_loss = float(payload["best_loss"])
    exact = "rng_states" in payload and "global_step" in payload
    trainer.global_step = int(payload.get("global_step", (trainer.epoch + 1) * trainer.steps_per_epoch))
    trainer.batch_in_epoch = int(payload.get("batch_in_epoch", 0))
    trainer.epochs_without_improvement = int(payload.get("epochs_without_improvement", 0))
    trainer.wandb_run_id = payload.get("wandb_run_id")
    trainer.last_train_loss = payload.get("last_train_loss")
    if "log_window" in payload:
        trainer.window.load_state_dict(payload["log_window"])
    if exact:
        for name, state in payload["rng_states"].items():
            if name == "data":
                trainer.sampler.load_state_dict(state)
            elif name in trainer.generators:
                trainer.generators[name].set_state(state)
    else:
        trainer.warn(f"{path} has no RNG or step state (original study format); resuming with "
                     "defaults, so the result is not guaranteed to match an uninterrupted run")
    saved_steps = payload.get("steps_per_epoch")
    if saved_steps is not None and saved_steps != trainer.steps_per_epoch:
        trainer.warn(f"{path} was trained with {saved_steps} steps per epoch, now "
                     f"{trainer.steps_per_epoch}: the data changed size; data order will differ")
    checksum = payload.get("dataset_checksum")
    if checksum and trainer.dataset_checksum and checksum != trainer.dataset_checksum:
        trainer.warn(f"the dataset changed since {path.name} was written (checksum differs)")
    return Restored(exact=exact)


def planned_lr(trainer: FlowTrainer, step: int) -> float:
    """The learning rate the schedule gives at `step` (for tests and the README rule)."""
    cfg = trainer.config
    return cfg.lr * trainer._stage_lr_scale(step) * cosine_warmup_factor(
        step, cfg.warmup_steps, trainer.total_steps)

