"""How good are the samples, and how straight and cheap are the paths that made them?

Sample quality: `wasserstein2` (exact optimal transport with POT) and `mmd_rbf` (biased
MMD^2 with a sum of RBF kernels). Both are noisy at finite n, so `metric_floor` measures
them between two disjoint halves of the real data: the value a perfect model would get.
Path quality: `path_straightness` and `normalized_path_energy` (Tong et al. 2023).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from study.errors import RunFailed, UsageError

# Exact OT on n=2000 points takes a few hundred thousand simplex pivots; POT's default
# (1e5) stops early and silently returns a too-large cost.
_EMD_MAX_ITER = 10_000_000
# flowctl's one set of MMD length scales: these multiples of the median pairwise distance
# of the data (`bandwidths="median"`, the default; `median_bandwidths`), so the kernel
# suits any dimension and scale (fixed 0.1/1/10 would see only noise in 1024-D).
MEDIAN_MULTIPLES = (0.5, 1.0, 2.0)
# Rows of the kernel matrix computed at once: 512 x 10,000 float64 is 41 MB (the whole
# 10,000 x 10,000 matrix, 800 MB, and its temporaries were the 10k evaluation's peak).
MMD_BLOCK_ROWS = 512


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise UsageError(
            f"expected x [N, D] and y [M, D] with the same D, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if len(x) == 0 or len(y) == 0:
        raise UsageError(f"expected non-empty point sets, got {len(x)} and {len(y)} points")


def wasserstein2(x: Tensor, y: Tensor) -> float:
    """Exact W2 between the empirical distributions of x: Tensor[N, D] and y: Tensor[M, D].

    Uniform weights, squared Euclidean cost, solved by network simplex in float64;
    returns sqrt(min_pi sum_ij pi_ij |x_i - y_j|^2). Memory is N * M * 8 bytes.
    """
    _check_pair(x, y)
    import ot  # POT pulls in scipy (~1-2 s): only pay for it when W2 is asked for

    x_np = x.detach().cpu().double().numpy()
    y_np = y.detach().cpu().double().numpy()
    a = np.full(len(x_np), 1.0 / len(x_np))
    b = np.full(len(y_np), 1.0 / len(y_np))
    cost_matrix = ot.dist(x_np, y_np, metric="sqeuclidean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # we check the result code ourselves
        cost, log = ot.emd2(a, b, cost_matrix, numItermax=_EMD_MAX_ITER, log=True)
    if log.get("result_code") != 1:
        raise RunFailed(
            f"exact OT did not converge for {len(x_np)}x{len(y_np)} points: {log.get('warning')}"
        )
    return math.sqrt(max(float(cost), 0.0))


def median_bandwidth(y: Tensor) -> float:
    """Median pairwise Euclidean distance within y: Tensor[M, D] (at most 2000 rows used)."""
    y = y[:2000].double()
    distances = torch.cdist(y, y)
    off_diagonal = distances[~torch.eye(len(y), dtype=torch.bool, device=y.device)]
    return off_diagonal.median().item() if off_diagonal.numel() else 1.0


def median_bandwidths(y: Tensor) -> list[float]:
    """MMD length scales for data y: Tensor[M, D]: MEDIAN_MULTIPLES x its median distance."""
    median = median_bandwidth(y)
    return [m * median for m in MEDIAN_MULTIPLES]


def mmd_rbf(
    x: Tensor,
    y: Tensor,
    *,
    bandwidths: Sequence[float] | str = "median",
    unbiased: bool = False,
) -> float:
    """Squared MMD between x: Tensor[N, D] (samples) and y: Tensor[M, D] (data).

    Kernel: k(a, b) = sum_s exp(-|a - b|^2 / (2 s^2)) over the bandwidths s (length scales,
    in data units). With `bandwidths="median"` (the default), s = MEDIAN_MULTIPLES x the median
    pairwise distance within y, so the kernel depends on the data only and stays comparable
    across models.

    Default (biased, V-statistic): mean k(x, x') + mean k(y, y') - 2 mean k(x, y), all means
    over every pair including i == j. It is the squared RKHS distance between the two
    empirical distributions: >= 0, exactly 0 for identical sets, with a positive O(1/n) bias
    (see `metric_floor`). `unbiased=True` drops the i == j terms from the first two means
    (Gretton et al. 2012, U-statistic): unbiased for MMD^2 but may be slightly negative.
    Computed in float64 on x's device, MMD_BLOCK_ROWS rows at a time: memory ~3 blocks of
    max(N, M) floats.
    """
    _check_pair(x, y)
    x, y = x.detach().double(), y.detach().to(x.device).double()
    if isinstance(bandwidths, str):
        if bandwidths != "median":
            raise UsageError(
                f"expected bandwidths to be a list of floats or 'median', got {bandwidths!r}"
            )
        bandwidths = median_bandwidths(y)
    if len(bandwidths) == 0 or min(bandwidths) <= 0:
        raise UsageError(f"expected positive bandwidths, got {list(bandwidths)}")
    if unbiased and (len(x) < 2 or len(y) < 2):
        raise UsageError(f"unbiased MMD needs at least 2 points per set, got {len(x)} and {len(y)}")

    def kernel_mean(a: Tensor, b: Tensor, *, drop_diagonal: bool) -> float:
        # In blocks of MMD_BLOCK_ROWS rows of a: memory stays ~3 blocks of len(b) floats.
        total = torch.zeros((), dtype=torch.float64, device=a.device)
        for start in range(0, len(a), MMD_BLOCK_ROWS):
            sq_dist = torch.cdist(a[start:start + MMD_BLOCK_ROWS], b).pow_(2)
            k = torch.zeros_like(sq_dist)
            for s in bandwidths:
                k += torch.exp(sq_dist * (-1.0 / (2.0 * s**2)))
            total += k.sum()
            if drop_diagonal:  # entries (i, start + i): a row against itself
                total -= k.diagonal(offset=start).sum()
        pairs = len(a) * (len(a) - 1) if drop_diagonal else len(a) * len(b)
        return (total / pairs).item()

    k_xx = kernel_mean(x, x, drop_diagonal=unbiased)
    k_yy = kernel_mean(y, y, drop_diagonal=unbiased)
    k_xy = kernel_mean(x, y, drop_diagonal=False)
    mmd2 = k_xx + k_yy - 2.0 * k_xy
    return mmd2 if unbiased else max(mmd2, 0.0)  # rounding can make the V-statistic -1e-17


def path_straightness(trajectory: Tensor, times: Tensor) -> float:
    """Mean distance of x_t from the straight line between its two ends.

    trajectory: Tensor[K, B, D], times: Tensor[K] (as in `OdeResult`). With
    s = (t - t_0) / (t_K - t_0), returns mean over k and b of
    |x_{t_k} - ((1 - s_k) x_{t_0} + s_k x_{t_K})|; the two ends (distance 0) are included
    in the mean. 0 for paths traversed along a straight line at constant speed.
    """
    if trajectory.ndim != 3 or times.ndim != 1 or len(times) != len(trajectory):
        raise UsageError(
            f"expected trajectory [K, B, D] and times [K], got {tuple(trajectory.shape)} and {tuple(times.shape)}"
        )
    if len(times) < 2 or times[-1] == times[0]:
        raise UsageError(f"expected at least two distinct times, got {times.tolist()}")
    trajectory = trajectory.detach().double()
    times = times.detach().to(trajectory.device).double()
    s = ((times - times[0]) / (times[-1] - times[0]))[:, None, None]
    line = (1.0 - s) * trajectory[0] + s * trajectory[-1]
    return (trajectory - line).norm(dim=-1).mean().item()


def normalized_path_energy(path_energy: Tensor, w2: float) -> float:
    """NPE = |mean(PE) - W2^2| / W2^2 (Tong et al. 2023). 0 for the optimal transport map.

    path_energy: Tensor[B], int_0^1 |v(x_t, t)|^2 dt per sample (`OdeResult.path_energy`).
    w2: W2 between the *source* samples x_0 and the target (data) distribution, not between
    generated samples and data: by Benamou-Brenier it is the least possible mean energy.
    """
    if w2 <= 0 or not math.isfinite(w2):
        raise UsageError(f"expected w2 > 0, got {w2}")
    mean_energy = path_energy.detach().double().mean().item()
    return abs(mean_energy - w2**2) / w2**2


def metric_floor(
    data: Tensor,
    n: int,
    generator: torch.Generator | None = None,
    *,
    bandwidths: Sequence[float] | str = "median",
) -> dict[str, float | int]:
    """W2 and MMD between two disjoint random subsets of n rows of data: Tensor[M, D].

    What a perfect model scores with n samples. If data has fewer than 2n rows, n = M // 2.
    Returns {"w2": float, "mmd": float, "n": int}; pass the same `bandwidths` as to `mmd_rbf`.
    """
    if data.ndim != 2 or len(data) < 2:
        raise UsageError(f"expected data [M, D] with M >= 2, got {tuple(data.shape)}")
    if n <= 0:
        raise UsageError(f"expected n > 0, got {n}")
    n = min(n, len(data) // 2)
    device = generator.device if generator is not None else "cpu"
    order = torch.randperm(len(data), generator=generator, device=device).to(data.device)
    first, second = data[order[:n]], data[order[n : 2 * n]]
    return {
        "w2": wasserstein2(first, second),
        "mmd": mmd_rbf(first, second, bandwidths=bandwidths),
        "n": n,
    }


@dataclass
class EvalResult:
    """One evaluation of a model: sample quality, solver cost, path geometry.

    w2, mmd: samples vs held-out data (`wasserstein2`, biased `mmd_rbf`);
    w2_floor, mmd_floor: the same between two halves of the data (`metric_floor`);
    nfe: velocity evaluations per sample batch; path_energy: mean int |v|^2 dt;
    npe: `normalized_path_energy` (None without a source-to-data W2);
    straightness: `path_straightness` (None without a trajectory);
    n: samples compared; solver, steps: how they were generated;
    user: the run's eval_fn's {name: value} (user_metrics.py), flattened by to_dict.
    """

    w2: float
    mmd: float
    nfe: int
    path_energy: float
    npe: float | None
    straightness: float | None
    w2_floor: float
    mmd_floor: float
    n: int
    solver: str
    steps: int
    user: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of primitives (JSON- and wandb-ready), user metrics at the top level."""
        values = asdict(self)
        return {**values, **values.pop("user")}
