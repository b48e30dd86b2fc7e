"""Augmentations applied to each batch of data points x_1 before the flow matcher sees them.

Each augmentation is a function `(x_1, std, generator) -> x_1'` with x_1 of shape [B, D];
it draws randomness only from `generator`, which lives on x_1's device (a CUDA generator
for CUDA batches). Adding one is a single function plus one line in `AUGMENTATIONS`, and
its name in `AUG_NAMES` (study/flow_matching/config.py; a test keeps the two in sync).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from study.errors import UsageError


def no_augmentation(x_1: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Identity: returns x_1 itself, [B, D]."""
    return x_1


def gaussian_noise(x_1: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """x_1 + std * N(0, I), [B, D], same device and dtype as x_1."""
    noise = torch.randn(x_1.shape, generator=generator, device=x_1.device, dtype=x_1.dtype)
    return x_1 + std * noise


AUGMENTATIONS: dict[str, Callable[[Tensor, float, torch.Generator], Tensor]] = {
    "none": no_augmentation,
    "noise": gaussian_noise,
}


def augment(name: str, x_1: Tensor, *, std: float, generator: torch.Generator) -> Tensor:
    """Apply the augmentation `name` to a batch x_1 of shape [B, D]; returns [B, D]."""
    if name not in AUGMENTATIONS:
        raise UsageError(f"unknown augmentation {name!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](x_1, std, generator)
