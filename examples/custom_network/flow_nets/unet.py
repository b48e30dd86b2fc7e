"""UNet1d: a small 1-D U-Net over the feature axis, conditioned on t.

The D features of a row are read as a signal of length D with one channel (split vectors
such as the study's 1024-D rows have neighbouring features that correlate, which
convolutions exploit; any D works, padded up to a multiple of 2**levels). The time t
enters every block as a learned per-channel shift of a sinusoidal embedding.

flowctl's network contract (docs/networks.md): `UNet1d(dim, **network_args)`, and
`forward(x [B, D], t [B] or 0-dim) -> velocity [B, D]`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def time_features(t: Tensor, size: int) -> Tensor:
    """[B] in [0, 1] -> [B, size] of sines and cosines at geometric frequencies."""
    half = size // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = 100.0 * t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class Block(nn.Module):
    """Conv -> GroupNorm -> + time shift -> SiLU, twice: [B, C_in, L] -> [B, C_out, L]."""

    def __init__(self, c_in: int, c_out: int, time_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(1, c_out)
        self.norm2 = nn.GroupNorm(1, c_out)
        self.time = nn.Linear(time_size, c_out)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        h = F.silu(self.norm1(self.conv1(h)) + self.time(temb)[:, :, None])
        return F.silu(self.norm2(self.conv2(h)))


class UNet1d(nn.Module):
    """`levels` down/up stages of width `channels * 2**level`, skip connections between them.

    dim: the number of features D; channels: the first stage's width; levels: how many
    times the signal is halved; time_size: the size of t's embedding.
    """

    def __init__(self, dim: int, *, channels: int = 16, levels: int = 2,
                 time_size: int = 32) -> None:
        super().__init__()
        self.dim, self.levels, self.time_size = dim, levels, time_size
        self.length = math.ceil(dim / 2**levels) * 2**levels
        widths = [channels * 2**level for level in range(levels + 1)]
        self.time_mlp = nn.Sequential(nn.Linear(time_size, time_size), nn.SiLU())
        self.stem = nn.Conv1d(1, widths[0], kernel_size=3, padding=1)
        self.down = nn.ModuleList(Block(widths[i], widths[i + 1], time_size) for i in range(levels))
        self.middle = Block(widths[-1], widths[-1], time_size)
        self.up = nn.ModuleList(Block(widths[i + 1] * 2, widths[i], time_size)
                                for i in reversed(range(levels)))
        self.head = nn.Conv1d(widths[0], 1, kernel_size=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: [B, D], t: [B] (or 0-dim, shared by the batch) -> velocity [B, D]."""
        assert x.ndim == 2 and x.shape[1] == self.dim, f"expected x of shape [B, {self.dim}], got {tuple(x.shape)}"
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_mlp(time_features(t.to(x.dtype), self.time_size))
        h = self.stem(F.pad(x, (0, self.length - self.dim))[:, None, :])
        skips = []
        for block in self.down:
            h = block(h, temb)
            skips.append(h)
            h = F.avg_pool1d(h, 2)
        h = self.middle(h, temb)
        for block in self.up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1), temb)
        return self.head(h)[:, 0, : self.dim]
