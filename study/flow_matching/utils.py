"""The compatibility module: the original study's API, kept importable by name for its
scripts and notebooks, and nothing of flowctl's own.

- `FlowTrainer(model, config, train_ds, val_ds, device, wandb_project, resume_path)`: the
  study's call, which `study_trainer_parts` turns into the trainer's built parts;
- the LambdaLR schedule (`get_cosine_schedule_with_warmup` over `cosine_warmup_factor`,
  schedule.py's cosine rule) and EMAModel (optim.py's);
- `study_checkpoint_state`: the study's checkpoints (no RNG or step state), resumable;
- the checkpoint helpers, thin wrappers over `study.runs.checkpoint` (atomic write, the one
  weights_only loader) that also load a LambdaLR's state from checkpoints that have one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from study.data.training_data import TrainingData
from study.flow_matching.optim import EMAModel
from study.flow_matching.schedule import warmup_decay_factor
from study.runs.checkpoint import (
    checkpoint_metadata,
    read_checkpoint,
    restore_modules,
    serialize_into,
    write_atomic,
)
from study.runs.paths import BEST_NAME, run_dir
from study.runs.recorder import RunRecorder

log = logging.getLogger("flowctl")

__all__ = [
    "EMAModel",
    "cosine_warmup_factor",
    "get_checkpoint_path",
    "get_cosine_schedule_with_warmup",
    "load_checkpoint",
    "load_checkpoint_with_stats_check",
    "save_checkpoint",
    "study_checkpoint_state",
    "study_trainer_parts",
]


def study_trainer_parts(config, train_ds, val_ds, device, wandb_project: str = "flow-matching-study",
                        resume_path=None, *, ckpt_root=None, wandb_mode: str | None = None):
    """The built parts (data, recorder, resume payload, its path) for the study's
    `FlowTrainer(model, config, train_ds, val_ds, device, wandb_project, resume_path)`: raw
    splits (tensors [N, D] or objects with an `x` tensor) normalised here, a run folder under
    `ckpt_root` (default: $FLOWCTL_CKPT_DIR, else study/checkpoints), a checkpoint to resume."""
    if isinstance(train_ds, TrainingData):
        raise TypeError("unexpected arguments: FlowTrainer(model, config, data, recorder, device) "
                        "with built parts takes no wandb_project, resume_path or ckpt_root")
    data = TrainingData.prepare(train_ds, val_ds, device=torch.device(device),
                                normalize=config.normalize)
    recorder = RunRecorder(run_dir(config.name, ckpt_root), config.name,
                           wandb_project=wandb_project, wandb_mode=wandb_mode)
    resume = None if resume_path is None else read_checkpoint(resume_path)
    return data, recorder, resume, resume_path


def study_checkpoint_state(payload: dict, source, steps_per_epoch: int, warn) -> dict:
    """An original study checkpoint (no RNG or step state) as FlowTrainer resumes it: the
    step counted from the epoch; `warn` is told that the resume cannot be exact."""
    warn(f"{source} has no RNG or step state (original study format); resuming with "
         "defaults, so the result is not guaranteed to match an uninterrupted run")
    return {**payload, "global_step": (int(payload["epoch"]) + 1) * steps_per_epoch}


def cosine_warmup_factor(step: int, num_warmup_steps: int, num_training_steps: int) -> float:
    """LR multiplier at optimizer step `step`: linear warmup to 1, then cosine decay to 0
    (schedule.py's cosine rule; a pure function of the step)."""
    return warmup_decay_factor(step, kind="cosine", warmup_steps=num_warmup_steps,
                               total_steps=num_training_steps, steps_per_epoch=1)


def get_cosine_schedule_with_warmup(
    optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int,
    lr_scale: Callable[[int], float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over `cosine_warmup_factor`; step it once per optimizer step.

    `lr_scale(step)` optionally multiplies the factor (stage-specific learning rates).
    Its state_dict holds only primitives (`last_epoch`, `base_lrs`, `_last_lr`).
    """
    def factor(step: int) -> float:
        scale = lr_scale(step) if lr_scale is not None else 1.0
        return scale * cosine_warmup_factor(step, num_warmup_steps, num_training_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def get_checkpoint_path(run_name: str, root: str | Path | None = None) -> str:
    """'{checkpoint root}/{run_name}/best.pt' as a string, as the study compares it
    (root: the argument, else $FLOWCTL_CKPT_DIR, else study/checkpoints)."""
    return str(run_dir(run_name, root) / BEST_NAME)


def save_checkpoint(path, epoch, model, ema, optimizer, scheduler, best_loss, config, stats,
                    **extra) -> Path:
    """Write the study's checkpoint dict (plus `extra` keys) atomically to `path`."""
    if dataclasses.is_dataclass(config):
        config = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    payload = {
        **checkpoint_metadata(),
        "epoch": int(epoch),
        "model_state_dict": model.state_dict(),
        "ema_shadow": ema.state_dict() if ema is not None else {},
        "optimizer_state_dict": optimizer.state_dict(),
        "optimizer_type": type(optimizer).__name__,
        "scheduler_state_dict": {} if scheduler is None else scheduler.state_dict(),
        "best_loss": float(best_loss),
        "config": dict(config),
        "normalization_stats": dict(stats or {}),
        **extra,
    }
    path = Path(path)
    write_atomic(path, functools.partial(serialize_into, payload))
    log.info("saved checkpoint %s", path)
    return path


def load_checkpoint(path, model, ema, optimizer, scheduler, device) -> tuple[int, float]:
    """Restore model, EMA, optimizer and scheduler; returns (start_epoch = epoch + 1, best_loss).

    The scheduler's `last_epoch` comes back exactly, so the warmup is not repeated.
    """
    payload = read_checkpoint(path)
    _restore(payload, Path(path), model, ema, optimizer, scheduler)
    return int(payload["epoch"]) + 1, float(payload["best_loss"])


def load_checkpoint_with_stats_check(path, model, ema, optimizer, scheduler, device,
                                     current_stats: dict | None = None) -> tuple[int, float]:
    """`load_checkpoint`, plus a warning when the normalization stats differ from the data's."""
    payload = read_checkpoint(path)
    difference = stats_difference(payload.get("normalization_stats"), current_stats)
    if difference is not None:
        log.warning("normalization stats of %s differ from the current data's (largest: %s)",
                    path, difference[0])
    _restore(payload, Path(path), model, ema, optimizer, scheduler)
    return int(payload["epoch"]) + 1, float(payload["best_loss"])


def _restore(payload: dict, path: Path, model, ema, optimizer, scheduler) -> None:
    restore_modules(payload, path, model, ema, optimizer)
    state = payload.get("scheduler_state_dict") or {}
    if scheduler is None or "last_epoch" not in state:
        return
    if "base_lrs" in state:  # a LambdaLR's own state (the study's checkpoints)
        state = dict(state)
        state.setdefault("lr_lambdas", [None] * len(scheduler.base_lrs))
        scheduler.load_state_dict(state)
    else:  # flowctl's: the step only (the optimizer's restored groups hold its LR)
        scheduler.last_epoch = int(state["last_epoch"])


def stats_difference(saved: dict | None, current: dict | None) -> tuple[str, float] | None:
    """The largest absolute difference between two {mean, std} dicts, or None if equal."""
    if not saved or not current:
        return None
    worst: tuple[str, float] | None = None
    for key in ("mean", "std"):
        if key not in saved or key not in current:
            continue
        a = torch.as_tensor(saved[key], dtype=torch.float64).cpu()
        b = torch.as_tensor(current[key], dtype=torch.float64).cpu()
        if a.shape != b.shape:
            return (f"{key} shape {tuple(a.shape)} vs {tuple(b.shape)}", float("inf"))
        diff = (a - b).abs()
        if diff.numel() and (worst is None or diff.max().item() > worst[1]):
            index = int(diff.argmax())
            worst = (f"{key}[{index}]: {a[index].item():.6g} vs {b[index].item():.6g}",
                     diff.max().item())
    return worst if worst and worst[1] > 1e-6 else None


