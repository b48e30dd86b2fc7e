"""Describe a checkpoint in JSON-able primitives (for `inspect-ckpt`), without torch.

`load_checkpoint_info(path)` reads the file with study.runs.checkpoint_reader (no torch: its
tensors are TensorInfo descriptors, a few values read on demand) and falls back to the torch
loader (`study.runs.checkpoint.read_checkpoint`, weights_only) for anything the reader does
not model (the legacy non-zip format, a global outside its list, a corrupt file, not a
flowctl checkpoint), so errors and refusals read exactly as they always have, and hostile
pickles never run code either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from study.errors import RunFailed
from study.runs.checkpoint import write_atomic
from study.runs.checkpoint_reader import (
    ZIP_MAGIC,
    DType,
    NotModelled,
    TensorInfo,
    dtype_named,
    read_zip_checkpoint,
)
from study.secrets import mask_secrets

_HASH_CHUNK = 1 << 20
_STATS_SHOWN = 8


# Hashing runs at about 1-2 GB/s: a big file's digest is remembered, keyed by what any rewrite
# changes (checkpoints are replaced by os.replace: a new inode and mtime every time).
SHA256_CACHE_MIN_BYTES = 64 << 20


def sha256_file(path: str | os.PathLike, *, remember: bool = True) -> str:
    """SHA-256 hex digest of the file; for files of SHA256_CACHE_MIN_BYTES or more, taken from
    the cache (`sha256_cache_dir()`) when device, inode, size and mtime all still match.
    `remember=False` (the dashboard, which writes nothing): the cache is read, never written."""
    stat = os.stat(path)
    cache = None
    if stat.st_size >= SHA256_CACHE_MIN_BYTES:
        cache = sha256_cache_dir() / f"{stat.st_dev}-{stat.st_ino}.json"
        key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError, KeyError,
                                 TypeError):
            remembered = json.loads(cache.read_text())
            if {k: remembered.get(k) for k in key} == key and len(remembered["sha256"]) == 64:
                return remembered["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    if cache is not None and remember:
        with contextlib.suppress(RunFailed):  # a read-only home only costs the next hash
            write_atomic(cache, json.dumps({**key, "path": os.path.abspath(path),
                                            "sha256": digest.hexdigest()}).encode())
    return digest.hexdigest()


def sha256_cache_dir() -> Path:
    """$FLOWCTL_CACHE_DIR/sha256, else $XDG_CACHE_HOME/flowctl/sha256 (~/.cache by default)."""
    root = os.environ.get("FLOWCTL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "flowctl")
    return Path(root) / "sha256"


def sha256_in_background(path: str | os.PathLike) -> Callable[[], str | None]:
    """Start hashing `path` on a daemon thread; the returned function waits for the digest.

    hashlib releases the GIL, so hashing a big file overlaps reading it (and `import torch`
    when the reader falls back). A daemon thread: a bad file's error need not wait for it.
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


def load_checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """The flowctl checkpoint at `path` as a dict whose tensors are TensorInfo; torch is
    imported only when the restricted reader cannot describe the file (see module doc).
    Raises UsageError (one line) exactly as `read_checkpoint` does."""
    from study.runs.checkpoint import FORMAT_VERSION, read_checkpoint
    from study.runs.safe_read import check_structure

    try:
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == ZIP_MAGIC
        if is_zip:
            ckpt = read_zip_checkpoint(path)
            version = ckpt.get("format_version", FORMAT_VERSION) if isinstance(ckpt, dict) else None
            if (isinstance(version, int) and not isinstance(version, bool)
                    and version <= FORMAT_VERSION and "model_state_dict" in ckpt):
                check_structure(ckpt, path)
                return ckpt
    except (OSError, NotModelled):
        pass
    return describe_loaded(read_checkpoint(path))  # words every refusal and error


def describe_loaded(value: Any) -> Any:
    """A tree loaded by torch with each tensor replaced by a TensorInfo-like LoadedTensor."""
    if hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "numel"):
        return LoadedTensor(value)
    if isinstance(value, dict):
        return {key: describe_loaded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [describe_loaded(item) for item in value]
    if isinstance(value, tuple):
        return tuple(describe_loaded(item) for item in value)
    return value


class LoadedTensor(TensorInfo):
    """TensorInfo's interface over a tensor torch has loaded (legacy files, fallbacks)."""

    def __init__(self, tensor: Any):
        name = str(tensor.dtype).removeprefix("torch.")
        dtype = dtype_named(name) or DType(name, tensor.element_size())
        super().__init__(shape=tuple(tensor.shape), dtype=dtype, stride=tuple(tensor.stride()),
                         offset=0, storage=None, reader=None)
        self.tensor = tensor

    @property
    def location(self) -> str:
        return str(self.tensor.device)

    def values(self, limit: int) -> list | None:
        return self.tensor.flatten()[:limit].tolist()


def summarize_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any], *,
                         sha256: str | None = None) -> dict[str, Any]:
    """JSON-able description of a checkpoint read by `load_checkpoint_info`. Fields an older
    checkpoint lacks are None.

    Tensor values are never included, except the first values of the normalization stats.
    `sha256`: the file's digest if already computed (see sha256_in_background).
    """
    model_state = ckpt.get("model_state_dict") or {}
    tensors = [
        {"name": name, "shape": list(value.shape), "dtype": value.dtype}
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
        "flowctl_install": _primitive(ckpt.get("flowctl_install")),
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
            "last_lr": _primitive(state_dict.get("last_lr", state_dict.get("_last_lr")))}


def _stats_summary(stats: Any) -> dict[str, Any] | None:
    if not isinstance(stats, dict):
        return None
    summary: dict[str, Any] = {"dim": None}
    for key in ("mean", "std"):
        value = stats.get(key)
        if _is_tensor(value):
            summary["dim"] = value.numel()
            summary[key] = [_primitive(v) for v in value.values(_STATS_SHOWN) or []]
        elif isinstance(value, (list, tuple)):
            summary["dim"] = len(value)
            summary[key] = [_primitive(v) for v in value[:_STATS_SHOWN]]
        else:
            summary[key] = _primitive(value)
    return summary


def _is_tensor(value: Any) -> bool:
    return isinstance(value, TensorInfo)


def _primitive(value: Any) -> Any:
    """Tensors, tuples and nested containers -> JSON-able values; a big tensor -> its shape."""
    if _is_tensor(value):
        if value.numel() <= _STATS_SHOWN:
            values = value.values(_STATS_SHOWN)
            if values is not None and value.numel() == 1:
                return _primitive(values[0])
            if values is not None:
                return _primitive(value.tolist())
        return f"<tensor {list(value.shape)} {value.dtype}>"
    if isinstance(value, dict):
        return {str(key): _primitive(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_primitive(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf/nan; an inf best_loss means "no validation yet"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def tensor_statistics(tensor: Any, chunk: int = 1 << 22) -> dict[str, Any]:
    """min, max, mean, std (population) of a loaded torch tensor's finite values, and how many
    values are not finite. Works through `chunk` elements at a time in float64 (a 2 GB
    tensor needs no 4 GB copy); None for what an empty or complex tensor lacks."""
    flat = tensor.detach().reshape(-1)
    stats: dict[str, Any] = {"min": None, "max": None, "mean": None, "std": None, "nonfinite": 0}
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, flat.numel(), chunk):
        part = flat[start:start + chunk]
        finite = part[part.isfinite()]
        stats["nonfinite"] += part.numel() - finite.numel()
        if part.is_complex() or finite.numel() == 0:
            continue
        finite = finite.double()
        low, high = finite.min().item(), finite.max().item()
        stats["min"] = low if stats["min"] is None else min(stats["min"], low)
        stats["max"] = high if stats["max"] is None else max(stats["max"], high)
        # Chan et al.: merge this chunk's mean and sum of squared deviations into the total.
        part_count, part_mean = finite.numel(), finite.mean().item()
        part_m2 = (finite - part_mean).square().sum().item()
        total = count + part_count
        delta = part_mean - mean
        mean += delta * part_count / total
        m2 += part_m2 + delta * delta * count * part_count / total
        count = total
    if count:
        stats["mean"], stats["std"] = mean, math.sqrt(m2 / count)
    return stats
