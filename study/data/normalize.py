"""Normalisation: the statistics a run trains with, and the two maps.

The model lives in the space x' = (x - mean) / std. `standard`: mean and std of each column
of the training split; `none`: mean 0 and std 1, so the model sees data units. Either way
the statistics go into the checkpoint as `normalization_stats` ({"mean": [D], "std": [D]})
and sampling maps back with `denormalize`, undoing exactly what training did.
"""

from __future__ import annotations

import torch
from torch import Tensor

from study.data.dataset import column_stats


def normalization_stats(x: Tensor, mode: str = "standard") -> dict[str, Tensor]:
    """{"mean": [D], "std": [D]} for x [N, D]: per-column (`column_stats`: constant columns
    get std 1) for `standard`, zeros and ones for `none`."""
    if mode == "none":
        return {"mean": torch.zeros(x.shape[1]), "std": torch.ones(x.shape[1])}
    assert mode == "standard", f"expected normalize none or standard, got {mode!r}"
    mean, std = column_stats(x)
    return {"mean": mean, "std": std}


def normalize(x: Tensor, stats: dict[str, Tensor]) -> Tensor:
    """(x - mean) / std for x [..., D], in x's dtype and on x's device."""
    return (x - stats["mean"].to(x)) / stats["std"].to(x)


def denormalize(x: Tensor, stats: dict[str, Tensor]) -> Tensor:
    """x * std + mean: the inverse of `normalize`."""
    return x * stats["std"].to(x) + stats["mean"].to(x)
