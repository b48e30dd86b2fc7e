"""The original study's helper API, kept importable by name for its scripts and notebooks.

EMAModel, get_cosine_schedule_with_warmup and cosine_warmup_factor live in `optim.py`;
the checkpoint helpers below are thin wrappers over `study.runs.checkpoint` (atomic write,
the one weights_only loader). flowctl itself does not use this module.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import torch

from study.flow_matching.optim import (
    EMAModel,
    cosine_warmup_factor,
    get_cosine_schedule_with_warmup,
)
from study.runs.checkpoint import (
    checkpoint_metadata,
    read_checkpoint,
    restore_modules,
    serialize_into,
    write_atomic,
)
from study.runs.paths import BEST_NAME, run_dir

log = logging.getLogger("flowctl")

__all__ = [
    "EMAModel",
    "cosine_warmup_factor",
    "get_checkpoint_path",
    "get_cosine_schedule_with_warmup",
    "load_checkpoint",
    "load_checkpoint_with_stats_check",
    "save_checkpoint",
]


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
    if scheduler is not None and payload.get("scheduler_state_dict"):
        state = dict(payload["scheduler_state_dict"])
        state.setdefault("lr_lambdas", [None] * len(scheduler.base_lrs))
        scheduler.load_state_dict(state)


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


