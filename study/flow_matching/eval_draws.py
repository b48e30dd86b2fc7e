"""Evaluation over K independent draws, and whether two runs differ by more than that noise.

W2 and MMD on a finite sample are noisy: one model scored W2 0.51 to 0.74 on 1,000 points
depending on the source draw alone. `evaluate_draws` scores a model K times with seeds
seed, seed + 1, ..., seed + K - 1; each draw has its own x_0 and its own n held-out rows
(the same rows for every model evaluated with the same seed and data), and reports every
draw with the mean and sample standard deviation. `spread_verdict` compares two such
summaries: a gap between the means no larger than the bigger of the two stds is "within
spread" (one run's mean lies inside the other's mean ± std band); otherwise the run with
the lower value is "better".

Example:
    summary = evaluate_draws(loaded, rows, draws=5, n=1000, solver="euler", steps=100, seed=0)
    summary["w2"], summary["w2_std"], [d["w2"] for d in summary["per_draw"]]
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from study.errors import UsageError
from study.flow_matching.evaluate import LoadedModel, evaluate

# Metrics that get a std and appear in every per-draw entry; lower is better for all four.
SPREAD_KEYS = ("w2", "mmd", "w2_floor", "mmd_floor")
# Metrics averaged over draws without a std (the same solver runs each time).
MEAN_KEYS = ("nfe", "path_energy", "npe", "straightness")
WITHIN, BETTER, WORSE, NO_SPREAD = "within spread", "better", "worse", "no spread"


def check_draws(draws: int) -> None:
    if draws <= 0:
        raise UsageError(f"--draws must be a positive integer, got {draws}")


def summarize_draws(per_draw: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of every metric over the draws and the std (ddof 1) of SPREAD_KEYS.

    per_draw: one dict per draw with SPREAD_KEYS and MEAN_KEYS (npe/straightness may be
    None). With one draw the std is None: one value has no spread.
    Any other numeric key (a user metric) is treated like SPREAD_KEYS.
    Returns {key: mean, f"{key}_std": std or None, "draws": K, "per_draw": per_draw}.
    """
    if not per_draw:
        raise UsageError("expected at least one draw, got none")
    summary: dict[str, Any] = {}
    user_keys = [key for key in per_draw[0] if key not in (*SPREAD_KEYS, *MEAN_KEYS, "seed")]
    for key in (*SPREAD_KEYS, *MEAN_KEYS, *user_keys):
        values = [d[key] for d in per_draw if d.get(key) is not None]
        summary[key] = statistics.fmean(values) if values else None
        if key not in MEAN_KEYS:
            summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    if all(isinstance(d.get("nfe"), int) for d in per_draw):
        summary["nfe"] = round(summary["nfe"])  # fixed-step solvers: the same count every draw
    return {**summary, "draws": len(per_draw), "per_draw": per_draw}


def evaluate_draws(loaded: LoadedModel, data_raw: torch.Tensor, *, draws: int, n: int = 1000,
                   solver: str = "euler", steps: int = 100, seed: int = 0,
                   batch_size: int = 4096, device: str | torch.device = "cpu") -> dict[str, Any]:
    """`evaluate` with seeds seed .. seed + draws - 1; returns `summarize_draws`' dict plus
    n, solver, steps and seeds. data_raw: held-out rows [M, D] in data units."""
    check_draws(draws)
    per_draw, result = [], None
    for draw_seed in range(seed, seed + draws):
        result = evaluate(loaded, data_raw, n=n, solver=solver, steps=steps, seed=draw_seed,
                          batch_size=batch_size, device=device)
        per_draw.append({"seed": draw_seed, **{key: getattr(result, key)
                                               for key in (*SPREAD_KEYS, *MEAN_KEYS)},
                         **result.user})
    return {**summarize_draws(per_draw), "n": result.n, "solver": solver, "steps": steps,
            "seeds": list(range(seed, seed + draws))}


def spread_verdict(reference: dict[str, Any], other: dict[str, Any], key: str = "w2") -> str:
    """How `other` compares with `reference` on `key` (lower is better), given their spreads.

    Both are `summarize_draws` dicts. "within spread" when |mean_other - mean_reference| <=
    max(std_reference, std_other); else "better" or "worse" (other vs reference). Without a
    std on either side (a single draw) the answer is "no spread".
    """
    stds = [s for s in (reference.get(f"{key}_std"), other.get(f"{key}_std")) if s is not None]
    if not stds or reference.get(key) is None or other.get(key) is None:
        return NO_SPREAD
    gap = other[key] - reference[key]
    if abs(gap) <= max(stds):
        return WITHIN
    return BETTER if gap < 0 else WORSE
