"""Built-in toy distributions, deterministic given a `torch.Generator`.

Every generator draws only from the generator it is given (never the global RNG) and creates
its tensors on `generator.device`, so a CUDA generator gives CUDA samples. Shapes and scales
follow the 2-D benchmarks of Tong et al. 2023 (torchcfm) where they have one:

- `moons`: two interleaved half circles, Gaussian noise 0.1, centred and scaled to x in [-2, 2].
- `8gaussians`: 8 components on a circle of radius 5, covariance sqrt(0.1) * I (torchcfm's).
- `checkerboard`: 8 squares of side 2 on [-4, 4]^2 (as in FFJORD).
- `scurve`: the 2-D S curve (sklearn's `make_s_curve` seen from the side), scaled by 1.5.
- `gmm`: a Gaussian mixture in any dimension (`gaussian_mixture`), for `make_splits`.

The runner's own scalings of Tong et al.'s benchmark are built-ins too, under `tong-*`
names (tong2023.py). Built-in datasets have fixed split sizes (`split_sizes`: SPLIT_SIZES,
the `tong-*` ones tong2023.SPLIT_SIZES); each split comes from its own generator
(`split_generator`), so the test split depends only on the seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from study.data import tong2023
from study.errors import UsageError
from study.seeds import stream_generator

SPLIT_SIZES = {"train": 20_000, "val": 2_000, "test": 2_000}


def moons(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaved half moons. Returns [n, 2] float32, roughly in [-2, 2] x [-1, 1]."""
    device = generator.device
    angle = math.pi * torch.rand(n, generator=generator, device=device)
    upper = torch.rand(n, generator=generator, device=device) < 0.5
    x = torch.where(upper, torch.cos(angle), 1.0 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x, y], dim=1)
    points = points + 0.1 * torch.randn(n, 2, generator=generator, device=device)
    # sklearn's moons span x in [-1, 2], y in [-0.5, 1]: centre them and stretch x to [-2, 2].
    return ((points - torch.tensor([0.5, 0.25], device=device)) * (4.0 / 3.0)).float()


def eight_gaussians(n: int, generator: torch.Generator) -> Tensor:
    """8 Gaussians evenly spaced on a circle of radius 5. Returns [n, 2] float32."""
    device = generator.device
    angles = torch.arange(8, device=device) * (math.pi / 4)
    centers = 5.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # [8, 2]
    which = torch.randint(0, 8, (n,), generator=generator, device=device)
    # torchcfm passes var=0.1 as sqrt(var) * I to MultivariateNormal: std is 0.1 ** 0.25.
    noise = 0.1**0.25 * torch.randn(n, 2, generator=generator, device=device)
    return (centers[which] + noise).float()


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the 8 dark squares of a 4x4 board over [-4, 4]^2. Returns [n, 2] float32."""
    device = generator.device
    x = 4.0 * torch.rand(n, generator=generator, device=device) - 2.0
    row = torch.rand(n, generator=generator, device=device)
    row = row - 2.0 * torch.randint(0, 2, (n,), generator=generator, device=device)
    y = row + torch.floor(x) % 2
    return (2.0 * torch.stack([x, y], dim=1)).float()


def scurve(n: int, generator: torch.Generator) -> Tensor:
    """An S-shaped curve with noise 0.1. Returns [n, 2] float32 in about [-1.5, 1.5] x [-3, 3]."""
    device = generator.device
    t = 3.0 * math.pi * (torch.rand(n, generator=generator, device=device) - 0.5)
    points = torch.stack([torch.sin(t), torch.sign(t) * (torch.cos(t) - 1.0)], dim=1)
    points = points + 0.1 * torch.randn(n, 2, generator=generator, device=device)
    return (1.5 * points).float()


def gaussian_mixture(n: int, dim: int, n_components: int, generator: torch.Generator, *,
                     radius: float = 4.0, component_std: float = 0.5,
                     center_seed: int = 0) -> Tensor:
    """Equal-weight isotropic Gaussian mixture in `dim` dimensions. Returns [n, dim] float32.

    The centres lie on the sphere of `radius` and come from `center_seed`, not `generator`:
    every split (and every run seed) samples the same distribution.
    """
    if dim < 1 or n_components < 1:
        raise UsageError(f"gmm needs dim >= 1 and n_components >= 1, got {dim} and {n_components}")
    device = generator.device
    directions = torch.randn(n_components, dim, generator=torch.Generator().manual_seed(center_seed))
    centers = radius * directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    which = torch.randint(0, n_components, (n,), generator=generator, device=device)
    noise = component_std * torch.randn(n, dim, generator=generator, device=device)
    return (centers.to(device)[which] + noise).float()


# name -> (n, generator) -> Tensor[n, 2] float32. Adding one: a function + one line here.
TOY_DATASETS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "moons": moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "scurve": scurve,
    **tong2023.DATASETS,
}
# Generators that `make_splits --generator` accepts: the 2-D ones plus `gmm` (any dimension).
GENERATOR_NAMES = (*TOY_DATASETS, "gmm")


def generate(name: str, n: int, *, dim: int, generator: torch.Generator,
             n_components: int = 8) -> Tensor:
    """n samples of a named generator in `dim` dimensions. Returns [n, dim] float32."""
    if name == "gmm":
        return gaussian_mixture(n, dim, n_components, generator)
    if name not in TOY_DATASETS:
        raise UsageError(f"unknown generator {name!r}; choose one of: {', '.join(GENERATOR_NAMES)}")
    if dim != 2:
        raise UsageError(f"generator {name!r} is 2-D only, got dim {dim}; use gmm for other dims")
    return TOY_DATASETS[name](n, generator)


def split_generator(name: str, seed: int, split: str) -> torch.Generator:
    """A CPU generator for one split of one dataset, derived from the run seed.

    Hashing (name, seed, split) keeps the streams independent: no two seeds or splits
    share draws, and the test split does not depend on the train size.
    """
    return stream_generator(seed, name, f"split={split}")


def split_sizes(name: str) -> dict[str, int]:
    """{split: rows} of a built-in dataset."""
    return tong2023.SPLIT_SIZES if name in tong2023.DATASETS else SPLIT_SIZES


def builtin_splits(name: str, seed: int) -> dict[str, Tensor]:
    """The fixed-size train/val/test splits of a built-in 2-D dataset: {split: [N, 2]}."""
    if name not in TOY_DATASETS:
        raise UsageError(f"unknown built-in dataset {name!r}; choose one of: {', '.join(TOY_DATASETS)}")
    return {split: TOY_DATASETS[name](size, split_generator(name, seed, split))
            for split, size in split_sizes(name).items()}


def sample_source(name: str, n: int, dim: int, generator: torch.Generator) -> Tensor:
    """n draws of x_0: `gaussian` is N(0, I); a built-in 2-D name samples that dataset.

    Returns [n, dim] float32 on `generator.device`.
    """
    if name == "gaussian":
        return torch.randn(n, dim, generator=generator, device=generator.device)
    if name not in TOY_DATASETS:
        raise UsageError(f"unknown source {name!r}; choose gaussian or one of: {', '.join(TOY_DATASETS)}")
    if dim != 2:
        raise UsageError(f"source {name!r} is 2-D but the data has dim {dim}; use --source gaussian")
    return TOY_DATASETS[name](n, generator)


def source_like(name: str, like: Tensor, generator: torch.Generator,
                cpu_generator: torch.Generator | None = None) -> Tensor:
    """x_0 with the shape, device and dtype of `like` [B, D]: N(0, I) drawn from `generator`
    (on like's device), or a built-in 2-D dataset drawn from `cpu_generator` and moved."""
    if name == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return sample_source(name, like.shape[0], like.shape[1], cpu_generator).to(like)
