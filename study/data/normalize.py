"""Per-column standardisation: the statistics a run trains with, and the two maps.

The model lives in the normalised space x' = (x - mean) / std of the training split; the
statistics go into the checkpoint as `normalization_stats` ({"mean": [D], "std": [D]}) and
sampling maps back with `denormalize`.
"""

from __future__ import annotations

from torch import Tensor

from study.data.dataset import column_stats


def normalization_stats(x: Tensor) -> dict[str, Tensor]:
    """{"mean": [D], "std": [D]} of x [N, D] (`column_stats`: constant columns get std 1)."""
    mean, std = column_stats(x)
    return {"mean": mean, "std": std}


def normalize(x: Tensor, stats: dict[str, Tensor]) -> Tensor:
    """(x - mean) / std for x [..., D], in x's dtype and on x's device."""
    return (x - stats["mean"].to(x)) / stats["std"].to(x)


def denormalize(x: Tensor, stats: dict[str, Tensor]) -> Tensor:
    """x * std + mean: the inverse of `normalize`."""
    return x * stats["std"].to(x) + stats["mean"].to(x)
