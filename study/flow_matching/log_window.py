"""The training rows' window: loss and grad-norm sums since the last log row, on the device.

Adding to device tensors costs no host sync; `mean_and_reset` syncs once per log row.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from study.errors import RunFailed


class LogWindow:
    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.grad_norm_sum = torch.zeros((), device=device)
        self.steps = 0

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.loss_sum += loss
        self.grad_norm_sum += grad_norm
        self.steps += 1

    def mean_and_reset(self, step: int, reduce=None) -> tuple[float, float]:
        """(mean loss, mean grad norm) over the window as floats; empties the window.

        `reduce` (e.g. a mean across ranks) is applied to the two means first, in place. A
        non-finite mean raises RunFailed naming optimizer step `step`.
        """
        means = torch.stack([self.loss_sum, self.grad_norm_sum]) / max(self.steps, 1)
        if reduce is not None:
            reduce(means)
        loss, grad_norm = means.tolist()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise RunFailed(f"non-finite {what} at step {step}")
        self.loss_sum.zero_()
        self.grad_norm_sum.zero_()
        self.steps = 0
        return loss, grad_norm

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum.cpu(), "grad_norm_sum": self.grad_norm_sum.cpu(),
                "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore `state_dict()`'s output; None (a checkpoint without a window): unchanged."""
        if state is None:
            return
        self.loss_sum.copy_(state["loss_sum"])
        self.grad_norm_sum.copy_(state["grad_norm_sum"])
        self.steps = int(state["steps"])
