"""Checkpoints: one plain dict of tensors and primitives, written atomically.

Writing: serialise once, then for each target file write a temp file in the same folder,
flush + fsync, `os.replace` over the target and fsync the folder. A crash at any instant
leaves either the previous complete file or the new complete one, never a partial file.
Reading: always `torch.load(weights_only=True)`, so a checkpoint can never run code.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import study
from study.errors import UsageError
from study.runs.checkpoint import FORMAT_VERSION, read_checkpoint, serialize, write_atomic

log = logging.getLogger("flowctl")

# The keys of the original study's checkpoints; anything else is optional on load.
LEGACY_KEYS = ("epoch", "model_state_dict", "ema_shadow", "optimizer_state_dict",
               "scheduler_state_dict", "best_loss", "config", "normalization_stats")


def build_checkpoint(epoch: int, model, ema, optimizer, scheduler, best_loss: float,
                     config: Any, stats: dict | None, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict. `config` may be a dataclass or a dict; it is stored as a dict."""
    if dataclasses.is_dataclass(config):
        config = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    payload = {
        "format_version": FORMAT_VERSION,
        "epoch": int(epoch),
        "model_state_dict": model.state_dict(),
        "ema_shadow": ema.state_dict() if ema is not None else {},
        "optimizer_state_dict": optimizer.state_dict(),
        "optimizer_type": type(optimizer).__name__,
        "scheduler_state_dict": _plain_scheduler_state(scheduler),
        "best_loss": float(best_loss),
        "config": dict(config),
        "normalization_stats": dict(stats or {}),
        "torch_version": str(torch.__version__),
        "flowctl_version": study.__version__,
        "host": platform.node(),
        "saved_at": datetime.now(timezone.utc).isoformat(),
    }
    payload.update(extra)
    return payload


def _plain_scheduler_state(scheduler) -> dict[str, Any]:
    """LambdaLR already keeps callables out of its state_dict (as None placeholders)."""
    return {} if scheduler is None else scheduler.state_dict()


def save_checkpoint(path, epoch, model, ema, optimizer, scheduler, best_loss, config, stats,
                    **extra) -> Path:
    """Build the checkpoint dict and write it atomically to `path`; returns the path."""
    path = Path(path)
    payload = build_checkpoint(epoch, model, ema, optimizer, scheduler, best_loss, config,
                               stats, **extra)
    write_atomic(path, serialize(payload))
    log.info("saved checkpoint %s", path)
    return path


def restore_training_state(payload: dict, path: Path, model, ema, optimizer, scheduler) -> None:
    """Restore model -> EMA -> optimizer -> scheduler from an already-read checkpoint."""
    try:
        model.load_state_dict(payload["model_state_dict"])
        if ema is not None and payload.get("ema_shadow"):
            ema.load_state_dict(payload["ema_shadow"])
        if optimizer is not None and payload.get("optimizer_state_dict"):
            optimizer.load_state_dict(payload["optimizer_state_dict"])
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line or "Missing" in line
                       or "Unexpected" in line), first[0] if first else type(err).__name__)
        raise UsageError(f"checkpoint {path} does not fit the model: {detail}") from None
    if scheduler is not None and payload.get("scheduler_state_dict"):
        state = dict(payload["scheduler_state_dict"])
        state.setdefault("lr_lambdas", [None] * len(scheduler.base_lrs))
        scheduler.load_state_dict(state)


def load_checkpoint(path, model, ema, optimizer, scheduler, device) -> tuple[int, float]:
    """Restore a run's state; returns (start_epoch = epoch + 1, best_loss).

    Tensors are mapped to `device`; the scheduler's `last_epoch` comes back exactly, so the
    warmup is not repeated.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    restore_training_state(payload, path, model, ema, optimizer, scheduler)
    return int(payload["epoch"]) + 1, float(payload["best_loss"])


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


def load_checkpoint_with_stats_check(path, model, ema, optimizer, scheduler, device,
                                     current_stats: dict | None = None) -> tuple[int, float]:
    """`load_checkpoint`, plus a warning when the normalization stats differ from the data's."""
    path = Path(path)
    payload = read_checkpoint(path)
    difference = stats_difference(payload.get("normalization_stats"), current_stats)
    if difference is not None:
        log.warning("normalization stats of %s differ from the current data's (largest: %s)",
                    path, difference[0])
    restore_training_state(payload, path, model, ema, optimizer, scheduler)
    return int(payload["epoch"]) + 1, float(payload["best_loss"])
