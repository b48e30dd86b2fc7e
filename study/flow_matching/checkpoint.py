"""Checkpoints: one plain dict of tensors and primitives, written atomically.

Writing: serialise once, then for each target file write a temp file in the same folder,
flush + fsync, `os.replace` over the target and fsync the folder. A crash at any instant
leaves either the previous complete file or the new complete one, never a partial file.
Reading: always `torch.load(weights_only=True)`, so a checkpoint can never run code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import study
from study.errors import RunFailed, UsageError
from study.flow_matching.ckpt_load import FORMAT_VERSION, load_checkpoint_file

log = logging.getLogger("flowctl")

TEMP_MARK = ".tmp-"
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


def serialize(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes, *, also: tuple[Path, ...] = ()) -> None:
    """Write `data` to `path` (and to each path in `also`, same folder) so that readers only
    ever see complete files.

    The bytes are written and fsynced once; each extra name is a hard link to the new file
    put in place with its own `os.replace` (a later rewrite of `path` replaces that name
    only), then one fsync of the folder. An OSError (disk full, permission denied, folder
    deleted) removes the temp files, leaves the previous files untouched and is raised as
    RunFailed naming the file.
    """
    path = Path(path)
    current = path
    temps = [p.with_name(f".{p.name}{TEMP_MARK}{os.getpid()}") for p in (path, *also)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temps[0], "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temps[0], path)
        for current, temp in zip(also, temps[1:], strict=True):
            current = Path(current)
            try:
                os.link(path, temp)
            except OSError:  # a filesystem without hard links: write a copy
                temp.write_bytes(data)
            os.replace(temp, current)
        _fsync_dir(path.parent)
    except OSError as err:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
        reason = (err.strerror or str(err)).lower()
        raise RunFailed(f"{reason} while writing {current.name} ({current.parent})") from err
    for written in (path, *also):
        if not Path(written).is_file() or Path(written).stat().st_size == 0:
            raise RunFailed(f"checkpoint {written} is missing or empty right after writing it")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temp files a killed writer left behind; returns what was removed."""
    removed = []
    if folder.is_dir():
        for leftover in folder.glob(f".*{TEMP_MARK}*"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def save_checkpoint(path, epoch, model, ema, optimizer, scheduler, best_loss, config, stats,
                    **extra) -> Path:
    """Build the checkpoint dict and write it atomically to `path`; returns the path."""
    path = Path(path)
    payload = build_checkpoint(epoch, model, ema, optimizer, scheduler, best_loss, config,
                               stats, **extra)
    write_atomic(path, serialize(payload))
    log.info("saved checkpoint %s", path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load and sanity-check a flowctl checkpoint (weights_only, memory-mapped, on the CPU;
    `load_state_dict` copies tensors to the model's device). Every problem is a one-line
    UsageError naming the file; see ckpt_load.py."""
    return load_checkpoint_file(path)


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
