"""A user metric for `--eval-fn flow_nets.metrics:moment_errors`.

flowctl calls it with the EMA model's samples [n, D] and n held-out rows [n, D] (both in
data units, CPU tensors) and the run's config (a dict), and logs each returned number as
`eval/{name}` beside W2 and MMD.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def moment_errors(samples: Tensor, data: Tensor, config: dict[str, Any]) -> dict[str, float]:
    """How far the samples' per-feature mean and std are from the data's (mean absolute
    difference over features): two numbers a 1024-D W2 hides."""
    return {
        "mean_error": (samples.mean(0) - data.mean(0)).abs().mean().item(),
        "std_error": (samples.std(0) - data.std(0)).abs().mean().item(),
    }
