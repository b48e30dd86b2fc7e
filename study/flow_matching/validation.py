"""Validation loss: the flow-matching MSE of the EMA weights on fixed draws.

x_0, t and eps are drawn once from the seed (`fixed_validation_batches`), and OT-based flows
pair with a generator reset on every call, so val/loss moves only when the weights do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.flow_matching.flows import build_flow
from study.flow_matching.optim import EMAModel
from study.flow_matching.sampler import fixed_validation_batches
from study.seeds import stream_generator


class Validator:
    """Mean validation MSE per dimension over `val_x` [N, D] (normalised rows)."""

    def __init__(self, val_x: Tensor, *, seed: int, source: str, batch_size: int,
                 device: torch.device, val_x0: Tensor | None = None):
        self.rows = len(val_x)
        self.seed = seed
        self.device = device
        self.batches = fixed_validation_batches(val_x, seed=seed, source=source,
                                                batch_size=batch_size, device=device, val_x0=val_x0)

    def loss(self, model: nn.Module, ema: EMAModel, stage) -> float:
        """The loss of `model` with `ema`'s weights swapped in, under `stage`'s flow."""
        with ema.average_parameters(model):
            return self.loss_of(model, stage)

    @torch.no_grad()
    def loss_of(self, model: nn.Module, stage) -> float:
        """The loss of `model` as it is (eval mode for the pass), under `stage`'s flow: each
        batch's summed loss per dimension, added in batch order, over the rows."""
        flow = build_flow(stage.flow, sigma=stage.sigma)
        pairing = stream_generator(self.seed, "val", "pairing")
        total = torch.zeros((), device=self.device)
        model.eval()
        try:
            for x_0, x_1, t, eps in self.batches:
                x_0, x_1 = flow.pair(x_0, x_1, generator=pairing)
                x_t, u_t = flow.path(x_0, x_1, t, eps)
                total += F.mse_loss(model(x_t, t), u_t, reduction="sum") / u_t.shape[-1]
        finally:
            model.train()
        return (total / self.rows).item()
