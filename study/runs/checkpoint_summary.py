"""Describe a loaded checkpoint in JSON-able primitives (for `inspect-ckpt`).

Loading itself is `study.runs.checkpoint.read_checkpoint`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from collections.abc import Callable
from typing import Any

from study.secrets import mask_secrets

_HASH_CHUNK = 1 << 20
_STATS_SHOWN = 8


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_in_background(path: str | os.PathLike) -> Callable[[], str | None]:
    """Start hashing `path` on a daemon thread; the returned function waits for the digest.

    hashlib releases the GIL, so hashing a 1 GB file (~1.5 s) overlaps `import torch` instead
    of following it. A daemon thread: a bad file's error need not wait for its hash.
    None if the file could not be read (loading it reports why).
    """
    digest: list[str | None] = [None]

    def work() -> None:
        with contextlib.suppress(OSError):
            digest[0] = sha256_file(path)

    thread = threading.Thread(target=work, name="sha256", daemon=True)
    thread.start()

    def wait() -> str | None:
        thread.join()
        return digest[0]

    return wait


def summarize_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any], *,
                         sha256: str | None = None) -> dict[str, Any]:
    """JSON-able description of a loaded checkpoint. Fields an older checkpoint lacks are None.

    Tensor values are never included, except the first values of the normalization stats.
    `sha256`: the file's digest if already computed (see sha256_in_background).
    """
    model_state = ckpt.get("model_state_dict") or {}
    tensors = [
        {"name": name, "shape": list(value.shape), "dtype": _dtype_name(value)}
        for name, value in model_state.items() if _is_tensor(value)
    ]
    epoch = _primitive(ckpt.get("epoch"))
    rng_states, ema_shadow = ckpt.get("rng_states"), ckpt.get("ema_shadow")
    return {
        "path": str(path),
        "size_bytes": os.path.getsize(path),
        "sha256": sha256 or sha256_file(path),
        "format_version": _primitive(ckpt.get("format_version")),
        "epoch": epoch,
        "epochs_completed": epoch + 1 if isinstance(epoch, int) else None,
        "global_step": _primitive(ckpt.get("global_step")),
        "batch_in_epoch": _primitive(ckpt.get("batch_in_epoch")),
        "stage": _primitive(ckpt.get("stage")),
        "best_loss": _primitive(ckpt.get("best_loss")),
        "epochs_without_improvement": _primitive(ckpt.get("epochs_without_improvement")),
        "config": mask_secrets(_primitive(ckpt.get("config"))),
        "parameter_count": sum(v.numel() for v in model_state.values() if _is_tensor(v)),
        "ema": isinstance(ema_shadow, dict) and len(ema_shadow) > 0,
        "tensors": tensors,
        "optimizer": _optimizer_summary(ckpt),
        "scheduler": _scheduler_summary(ckpt.get("scheduler_state_dict")),
        "normalization_stats": _stats_summary(ckpt.get("normalization_stats")),
        "rng_states": [str(name) for name in rng_states] if isinstance(rng_states, dict) else None,
        "wandb_run_id": _primitive(ckpt.get("wandb_run_id")),
        "wandb_project": _primitive(ckpt.get("wandb_project")),
        "torch_version": _primitive(ckpt.get("torch_version")),
        "flowctl_version": _primitive(ckpt.get("flowctl_version")),
        "saved_at": _primitive(ckpt.get("saved_at")),
        "host": _primitive(ckpt.get("host")),
        "dataset_checksum": _primitive(ckpt.get("dataset_checksum")),
    }


def _optimizer_summary(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    state_dict = ckpt.get("optimizer_state_dict")
    if not isinstance(state_dict, dict):
        return None
    groups = [
        {key: (len(value) if key == "params" else _primitive(value)) for key, value in group.items()}
        for group in state_dict.get("param_groups", []) if isinstance(group, dict)
    ]
    steps = [
        _primitive(entry["step"]) for entry in (state_dict.get("state") or {}).values()
        if isinstance(entry, dict) and "step" in entry
    ]
    return {
        "type": _primitive(ckpt.get("optimizer_type")),
        "lr": groups[0].get("lr") if groups else None,
        "step": int(max(steps)) if steps else None,
        "param_groups": groups,  # "params" is the number of parameters in the group
    }


def _scheduler_summary(state_dict: Any) -> dict[str, Any] | None:
    if not isinstance(state_dict, dict):
        return None
    return {"last_epoch": _primitive(state_dict.get("last_epoch")),
            "last_lr": _primitive(state_dict.get("_last_lr"))}


def _stats_summary(stats: Any) -> dict[str, Any] | None:
    if not isinstance(stats, dict):
        return None
    summary: dict[str, Any] = {"dim": None}
    for key in ("mean", "std"):
        value = stats.get(key)
        if _is_tensor(value):
            summary["dim"] = value.numel()
            summary[key] = [_primitive(v) for v in value.flatten()[:_STATS_SHOWN].tolist()]
        elif isinstance(value, (list, tuple)):
            summary["dim"] = len(value)
            summary[key] = [_primitive(v) for v in value[:_STATS_SHOWN]]
        else:
            summary[key] = _primitive(value)
    return summary


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "numel") and hasattr(value, "dtype")


def _dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _primitive(value: Any) -> Any:
    """Tensors, tuples and nested containers -> JSON-able values; a big tensor -> its shape."""
    if _is_tensor(value):
        if value.numel() == 1:
            return _primitive(value.item())
        if value.numel() <= _STATS_SHOWN:
            return _primitive(value.tolist())
        return f"<tensor {list(value.shape)} {_dtype_name(value)}>"
    if isinstance(value, dict):
        return {str(key): _primitive(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_primitive(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf/nan; an inf best_loss means "no validation yet"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
