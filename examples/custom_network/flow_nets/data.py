"""A user dataset for `--dataset flow_nets.data:smooth_signals`.

Rows are smooth random signals of `dim` features (a sum of a few low-frequency sines with
random amplitudes and phases, plus a little noise): neighbouring features correlate, the
structure a 1-D convolution can use. flowctl calls it with `seed` and the run's
`dataset_args` and records a checksum of what it returned.
"""

from __future__ import annotations

import math

import torch


def smooth_signals(*, seed: int, rows: int = 3000, dim: int = 16, waves: int = 3,
                   noise: float = 0.05) -> dict[str, torch.Tensor]:
    """{"train": [rows, dim], "val": [rows // 10, dim], "test": [rows // 10, dim]}."""
    generator = torch.Generator().manual_seed(seed)
    total = rows + 2 * (rows // 10)
    positions = torch.linspace(0, 1, dim)
    frequency = torch.arange(1, waves + 1, dtype=torch.float32)
    amplitude = torch.randn(total, waves, generator=generator) / frequency
    phase = 2 * math.pi * torch.rand(total, waves, generator=generator)
    angles = 2 * math.pi * frequency[None, :, None] * positions[None, None, :] + phase[:, :, None]
    signals = (amplitude[:, :, None] * torch.sin(angles)).sum(1)
    signals += noise * torch.randn(total, dim, generator=generator)
    val_rows = rows // 10
    return {"train": signals[:rows], "val": signals[rows:rows + val_rows],
            "test": signals[rows + val_rows:]}
