"""Sample and path metrics on point clouds with known answers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from study.errors import UsageError
from study.flow_matching.metrics import (
    EvalResult,
    metric_floor,
    mmd_rbf,
    normalized_path_energy,
    path_straightness,
    wasserstein2,
)


def cloud(n: int, d: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_w2_of_a_cloud_with_itself_is_zero():
    x = cloud(300)
    # ot.dist expands |x|^2 + |y|^2 - 2 x.y: rounding leaves costs ~1e-16, so W2 ~1e-8.
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-6)


def test_w2_of_a_shifted_cloud_is_the_shift_length():
    x = cloud(1000, d=3)
    shift = torch.tensor([0.3, -1.2, 0.4], dtype=torch.float64)  # |shift| = 1.3
    assert wasserstein2(x, x + shift) == pytest.approx(1.3, abs=1e-6)
    assert wasserstein2(x + shift, x) == pytest.approx(1.3, abs=1e-6)


def test_w2_handles_sets_of_different_sizes_and_float32():
    x, y = cloud(200).float(), cloud(300, seed=1).float()
    assert 0.0 < wasserstein2(x, y) < 1.0


def test_w2_rejects_mismatched_dimensions():
    with pytest.raises(UsageError, match="same D"):
        wasserstein2(cloud(5, d=2), cloud(5, d=3))


def test_mmd_of_identical_sets_is_zero_and_grows_with_shift():
    x = cloud(500)
    assert mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-12)
    values = [mmd_rbf(x, x + shift) for shift in (0.25, 0.5, 1.0, 2.0)]
    assert values[0] > 0
    assert values == sorted(values), f"expected MMD to grow with the shift, got {values}"


def test_unbiased_mmd_is_near_zero_for_two_samples_of_one_distribution():
    x, y = cloud(500), cloud(500, seed=1)
    biased, unbiased = mmd_rbf(x, y), mmd_rbf(x, y, unbiased=True)
    assert abs(unbiased) < biased  # the V-statistic carries a positive O(1/n) bias
    assert abs(unbiased) < 5e-3


@pytest.mark.parametrize("unbiased", [False, True])
def test_blocked_mmd_equals_the_whole_kernel_matrix_formula(unbiased):
    """mmd_rbf works MMD_BLOCK_ROWS rows at a time; sizes that cross block edges (and a
    second set longer than the first) give the textbook formula on the full matrices."""
    from study.flow_matching.metrics import MMD_BLOCK_ROWS, median_bandwidths

    x, y = cloud(2 * MMD_BLOCK_ROWS + 37), cloud(3 * MMD_BLOCK_ROWS + 5, seed=1) + 0.3
    scales = median_bandwidths(y)

    def mean_kernel(a, b, drop):
        k = sum(torch.exp(-torch.cdist(a, b).pow(2) / (2 * s**2)) for s in scales)
        return ((k.sum() - k.diagonal().sum()) / (len(a) * (len(a) - 1)) if drop else k.mean()).item()

    x, y = x.double(), y.double()
    expected = (mean_kernel(x, x, unbiased) + mean_kernel(y, y, unbiased)
                - 2 * mean_kernel(x, y, False))
    assert mmd_rbf(x, y, unbiased=unbiased) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_mmd_with_median_bandwidths():
    x = cloud(400)
    near, far = mmd_rbf(x, x + 0.2, bandwidths="median"), mmd_rbf(x, x + 1.0, bandwidths="median")
    assert 0 < near < far
    # The median heuristic follows the data's scale: scaling both sets leaves MMD unchanged.
    assert mmd_rbf(10 * x, 10 * x + 2.0, bandwidths="median") == pytest.approx(
        mmd_rbf(x, x + 0.2, bandwidths="median")
    )


def test_mmd_rejects_bad_bandwidths():
    with pytest.raises(UsageError, match="bandwidths"):
        mmd_rbf(cloud(5), cloud(5), bandwidths="mean")
    with pytest.raises(UsageError, match="positive bandwidths"):
        mmd_rbf(cloud(5), cloud(5), bandwidths=(1.0, 0.0))


def test_straight_constant_speed_paths_have_zero_straightness():
    x_start, x_end = cloud(10), cloud(10, seed=1)
    times = torch.linspace(0, 1, 11, dtype=torch.float64)
    trajectory = (1 - times)[:, None, None] * x_start + times[:, None, None] * x_end
    assert path_straightness(trajectory, times) == pytest.approx(0.0, abs=1e-12)


def test_curved_paths_have_positive_straightness():
    # Half circles from (1, 0) to (-1, 0): x_t = (cos(pi t), sin(pi t)). The chord is the
    # x-axis, traversed at constant speed: distance to it is |(cos(pi t) - (1 - 2t), sin(pi t))|.
    times = torch.linspace(0, 1, 101, dtype=torch.float64)
    path = torch.stack([torch.cos(math.pi * times), torch.sin(math.pi * times)], dim=-1)
    trajectory = path[:, None, :].expand(101, 4, 2)
    expected = (
        torch.stack([torch.cos(math.pi * times) - (1 - 2 * times), torch.sin(math.pi * times)], -1)
        .norm(dim=-1)
        .mean()
    )
    assert path_straightness(trajectory, times) == pytest.approx(expected.item())
    assert path_straightness(trajectory, times) > 0.3


def test_straightness_rejects_mismatched_times():
    with pytest.raises(UsageError, match="times"):
        path_straightness(torch.zeros(5, 2, 2), torch.linspace(0, 1, 4))


def test_normalized_path_energy():
    path_energy = torch.tensor([3.0, 5.0])  # mean 4
    assert normalized_path_energy(path_energy, w2=2.0) == 0.0
    assert normalized_path_energy(path_energy, w2=1.0) == pytest.approx(3.0)
    assert normalized_path_energy(torch.tensor([1.0]), w2=2.0) == pytest.approx(0.75)
    with pytest.raises(UsageError, match="w2 > 0"):
        normalized_path_energy(path_energy, w2=0.0)


def test_metric_floor_is_small_and_positive_for_a_gaussian():
    data = cloud(3000)
    floor = metric_floor(data, 1000, torch.Generator().manual_seed(0))
    assert floor["n"] == 1000
    assert 0 < floor["w2"] < 0.3
    assert 0 < floor["mmd"] < 0.01
    # The same data, shifted by a whole standard deviation, is far above the floor.
    assert wasserstein2(data[:1000], data[1000:2000] + 1.0) > 3 * floor["w2"]


def test_metric_floor_uses_half_the_data_when_short_and_is_reproducible():
    data = cloud(50)
    first = metric_floor(data, 100, torch.Generator().manual_seed(3))
    second = metric_floor(data, 100, torch.Generator().manual_seed(3))
    assert first == second and first["n"] == 25


def test_eval_result_to_dict_is_json_ready():
    result = EvalResult(
        w2=0.1,
        mmd=0.002,
        nfe=40,
        path_energy=2.5,
        npe=0.05,
        straightness=None,
        w2_floor=0.05,
        mmd_floor=0.001,
        n=1000,
        solver="rk4",
        steps=10,
    )
    as_dict = result.to_dict()
    assert as_dict["solver"] == "rk4" and as_dict["straightness"] is None
    assert json.loads(json.dumps(as_dict)) == as_dict
