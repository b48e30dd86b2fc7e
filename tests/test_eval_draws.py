"""eval_draws: the mean and std of K draws, and the spread-aware verdict of --compare."""

from __future__ import annotations

import statistics

import pytest

from study.errors import UsageError
from study.flow_matching.eval_draws import (
    BETTER,
    NO_SPREAD,
    WITHIN,
    WORSE,
    check_draws,
    spread_verdict,
    summarize_draws,
)


def draw(w2: float, mmd: float = 0.01, **extra) -> dict:
    return {"w2": w2, "mmd": mmd, "w2_floor": 0.1, "mmd_floor": 0.001, "nfe": 100,
            "path_energy": 1.0, "npe": None, "straightness": 0.2, **extra}


def summary(mean: float, std: float | None) -> dict:
    return {"w2": mean, "w2_std": std}


def test_summary_is_the_mean_and_sample_std_of_the_draws():
    values = [0.51, 0.74, 0.6]
    result = summarize_draws([draw(v, seed=i) for i, v in enumerate(values)])
    assert result["w2"] == pytest.approx(statistics.fmean(values))
    assert result["w2_std"] == pytest.approx(statistics.stdev(values))
    assert result["w2_floor_std"] == 0.0 and result["nfe"] == 100 and result["npe"] is None
    assert result["draws"] == 3 and [d["seed"] for d in result["per_draw"]] == [0, 1, 2]


def test_one_draw_has_no_spread():
    result = summarize_draws([draw(0.3)])
    assert result["w2"] == 0.3 and result["w2_std"] is None and result["mmd_std"] is None


@pytest.mark.parametrize(("reference", "other", "verdict"), [
    (summary(0.50, 0.05), summary(0.54, 0.02), WITHIN),   # gap 0.04 <= larger std 0.05
    (summary(0.50, 0.01), summary(0.54, 0.05), WITHIN),   # the other's spread counts too
    (summary(0.50, 0.05), summary(0.45, 0.01), WITHIN),   # exactly one std: still within
    (summary(0.50, 0.02), summary(0.40, 0.03), BETTER),   # lower by more than 0.03
    (summary(0.50, 0.02), summary(0.60, 0.03), WORSE),
    (summary(0.50, None), summary(0.60, None), NO_SPREAD),  # single draws: no verdict
    (summary(0.50, None), summary(0.60, 0.01), WORSE),     # one side's spread suffices
])
def test_spread_verdict(reference, other, verdict):
    assert spread_verdict(reference, other, "w2") == verdict


def test_draws_must_be_positive():
    with pytest.raises(UsageError, match="--draws must be a positive integer, got 0"):
        check_draws(0)
