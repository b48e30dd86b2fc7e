"""What exact W2 on 10,000 points can resolve on Tong et al.'s 2-D targets: a perfect model's score.

For each target, W2 between two independent n-row draws (`--pairs` pairs of seeds), i.e. what
a model that samples the true distribution scores against a test split. Then two variants the
runner's data differ by: the moons -> 8gaussians target with exactly n/8 rows per component in
both draws (the built-in draws a random component per row), and sklearn's moons, whose angles
lie on an even grid (`linspace`), against `tong-moons`' random angles. docs/results.md reads
the numbers. One thread, about 30 s per W2 at n = 10,000 (1.7 GB).

    python scripts/tong2023_floors.py [--n 10000] [--pairs 2]
"""

from __future__ import annotations

import argparse
import math

import torch

from study.data.toy import TOY_DATASETS
from study.flow_matching.metrics import wasserstein2

TARGETS = ("tong-8gaussians", "tong-pair-8gaussians", "tong-moons", "tong-scurve")


def draw(name: str, n: int, seed: int) -> torch.Tensor:
    return TOY_DATASETS[name](n, torch.Generator().manual_seed(seed))


def balanced_pair_8gaussians(n: int, seed: int) -> torch.Tensor:
    """tong-pair-8gaussians (radius 12, std 1.5) with n/8 rows per component exactly."""
    angles = torch.arange(8) * (2 * math.pi / 8)
    centers = 12.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    return centers[torch.arange(n) % 8] + 1.5 * noise


def grid_moons(n: int, seed: int) -> torch.Tensor:
    """sklearn's make_moons(noise=0.05) (angles on an even grid), x2, x - 1: tong-moons' scaling."""
    outer, inner = n // 2, n - n // 2
    a_out = torch.linspace(0, math.pi, outer, dtype=torch.float64)
    a_in = torch.linspace(0, math.pi, inner, dtype=torch.float64)
    points = torch.stack([torch.cat([torch.cos(a_out), 1 - torch.cos(a_in)]),
                          torch.cat([torch.sin(a_out), 0.5 - torch.sin(a_in)])], dim=1)
    points = points + 0.05 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed),
                                         dtype=torch.float64)
    points = 2 * points
    points[:, 0] -= 1
    return points.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, seeds = args.n, [(2 * k + 1, 2 * k + 2) for k in range(args.pairs)]
    rows = [(f"{name}: two random draws", [wasserstein2(draw(name, n, a), draw(name, n, b))
                                          for a, b in seeds]) for name in TARGETS]
    rows.append(("tong-pair-8gaussians: n/8 rows per component in both",
                 [wasserstein2(balanced_pair_8gaussians(n, a), balanced_pair_8gaussians(n, b))
                  for a, b in seeds]))
    rows.append(("tong-moons vs sklearn's grid-angle moons",
                 [wasserstein2(draw("tong-moons", n, a), grid_moons(n, b)) for a, b in seeds]))
    print(f"| W2 at n = {n:,} | " + " | ".join(f"seeds {a}, {b}" for a, b in seeds) + " |")
    print("|---|" + "---|" * len(seeds))
    for what, values in rows:
        print(f"| {what} | " + " | ".join(f"{value:.3f}" for value in values) + " |")


if __name__ == "__main__":
    main()
