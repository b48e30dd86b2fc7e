"""The 2-D datasets of Tong et al.'s benchmark (TMLR 2024; Table 2 of [SF]2M), as their runner
generates them (atong01/conditional-flow-matching, `runner/src/datamodules/`), beside
flowctl's own `moons`, `8gaussians` and `scurve`, which are scaled differently.

Written from the distributions the runner samples, with torch generators instead of
sklearn/numpy/torchdyn's global RNGs: the same distributions, not the same numbers.

- `tong-moons` (N -> moons): sklearn `make_moons(noise=0.05)`, then x2 and x - 1:
  x in about [-3, 3], y in [-1, 2], mean (0, 0.5).
- `tong-scurve` (N -> scurve): sklearn `make_s_curve(noise=0.05)`, columns x and z, x1.5:
  x in about [-1.5, 1.5], y in [-3, 3], mean 0.
- `tong-8gaussians` (N -> 8gaussians): torchdyn's `gaussians` with 8 components on a circle
  of radius 5, std 1, n/8 rows each (torchdyn's extra shift of 1e-4 per component is left out).
- `tong-pair-moons`, `tong-pair-8gaussians`: the source and target of moons -> 8gaussians
  (the runner's `twodim` task, `two_dim.py`): moons with noise 0.1, centred and scaled by the
  mean and std of all their coordinates together (one scalar each, not per column) and x7;
  8 Gaussians of std 0.5 on a circle of radius 4, a random component per row, then x3
  (radius 12, std 1.5). The runner standardises with the statistics of its own 12,000-row
  sample; here the population values (PAIR_MOONS_MEAN, PAIR_MOONS_STD) are used, so every
  split is scaled alike (the two differ by about 1%).

Differences that do not change the distribution: sklearn's moons place their angles on an
even grid (`linspace`) where these draw them uniformly at random (its S curve draws them at
random too).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# The runner's split is 10,000 / 1,000 / 1,000; the test split here holds 10,000 rows so
# that W2 can be scored on 10,000 points as in [SF]2M's Table 2 (`flowctl eval --n 10000`);
# `--n 1000` scores a random 1,000 of them, as the runner does.
SPLIT_SIZES = {"train": 10_000, "val": 1_000, "test": 10_000}
PAIR_MOONS_NOISE = 0.1
# Mean and std of all coordinates of make_moons(noise=0.1) together, in closed form:
# E[x] = 1/2, E[y] = 1/4; E[x^2] = 1 + s^2, E[y^2] = 5/8 - 1/pi + s^2 (s: the noise std).
PAIR_MOONS_MEAN = 0.375
PAIR_MOONS_STD = math.sqrt((1.0 + 0.625 - 1.0 / math.pi + 2 * PAIR_MOONS_NOISE**2) / 2
                           - PAIR_MOONS_MEAN**2)


def sklearn_moons(n: int, noise: float, generator: torch.Generator) -> Tensor:
    """sklearn's two moons: (cos a, sin a) and (1 - cos a, 1/2 - sin a), a ~ U[0, pi], half
    the rows each, plus N(0, noise^2) per coordinate. Returns [n, 2] float32, in row order
    (no shuffling: rows are i.i.d. within each half and callers permute)."""
    device = generator.device
    angle = math.pi * torch.rand(n, generator=generator, device=device)
    outer = torch.arange(n, device=device) < n // 2  # sklearn: n // 2 outer, the rest inner
    x = torch.where(outer, torch.cos(angle), 1.0 - torch.cos(angle))
    y = torch.where(outer, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x, y], dim=1)
    return (points + noise * torch.randn(n, 2, generator=generator, device=device)).float()


def _shuffled(points: Tensor, generator: torch.Generator) -> Tensor:
    return points[torch.randperm(len(points), generator=generator, device=generator.device)]


def tong_moons(n: int, generator: torch.Generator) -> Tensor:
    """N -> moons's target: sklearn moons (noise 0.05) x2, x - 1. Returns [n, 2] float32."""
    points = 2.0 * sklearn_moons(n, 0.05, generator)
    points[:, 0] -= 1.0
    return _shuffled(points, generator)


def tong_scurve(n: int, generator: torch.Generator) -> Tensor:
    """N -> scurve's target: sklearn's S curve (noise 0.05 on each of its 3 coordinates),
    columns x and z, x1.5. Returns [n, 2] float32."""
    device = generator.device
    t = 3.0 * math.pi * (torch.rand(n, generator=generator, device=device) - 0.5)
    points = torch.stack([torch.sin(t), torch.sign(t) * (torch.cos(t) - 1.0)], dim=1)
    points = points + 0.05 * torch.randn(n, 2, generator=generator, device=device)
    return (1.5 * points).float()


def tong_8gaussians(n: int, generator: torch.Generator) -> Tensor:
    """N -> 8gaussians's target: 8 components of std 1 on a circle of radius 5, n // 8 rows
    each (the remainder spread over the first ones), in random order. Returns [n, 2] float32."""
    device = generator.device
    angles = torch.arange(8, device=device) * (math.pi / 4)
    centers = 5.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # [8, 2]
    which = torch.randperm(n, generator=generator, device=device) % 8
    return (centers[which] + torch.randn(n, 2, generator=generator, device=device)).float()


def tong_pair_moons(n: int, generator: torch.Generator) -> Tensor:
    """moons -> 8gaussians's source: sklearn moons (noise 0.1), (x - PAIR_MOONS_MEAN) /
    PAIR_MOONS_STD x 7 on both columns. Returns [n, 2] float32, mean about (1.2, -1.2)."""
    points = sklearn_moons(n, PAIR_MOONS_NOISE, generator)
    return _shuffled((points - PAIR_MOONS_MEAN) / PAIR_MOONS_STD * 7.0, generator)


def tong_pair_8gaussians(n: int, generator: torch.Generator) -> Tensor:
    """moons -> 8gaussians's target: 8 components of std 1.5 on a circle of radius 12, a
    uniformly random component per row. Returns [n, 2] float32."""
    device = generator.device
    angles = torch.arange(8, device=device) * (math.pi / 4)
    centers = 4.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    which = torch.randint(0, 8, (n,), generator=generator, device=device)
    points = centers[which] + 0.5 * torch.randn(n, 2, generator=generator, device=device)
    return (3.0 * points).float()


DATASETS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "tong-moons": tong_moons,
    "tong-scurve": tong_scurve,
    "tong-8gaussians": tong_8gaussians,
    "tong-pair-moons": tong_pair_moons,
    "tong-pair-8gaussians": tong_pair_8gaussians,
}
