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
from study.flow_matching.sampler import VAL_SEED_OFFSET, fixed_validation_batches


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

    def loss_of(self, model: nn.Module, stage) -> float:
        """The loss of `model` as it is (eval mode for the pass), under `stage`'s flow."""
        return self.total(self.batch_terms(model, stage, range(len(self.batches))))

    @torch.no_grad()
    def batch_terms(self, model: nn.Module, stage, which: range) -> list[Tensor]:
        """Each batch's summed loss per dimension, for the batches in `which` (device scalars).

        A part that does not start at batch 0 is only for flows whose pairing draws nothing
        (not `solves_a_plan`): an OT flow's pairing generator runs through every batch."""
        flow = build_flow(stage.flow, sigma=stage.sigma)
        assert which.start == 0 or not flow.solves_a_plan, "expected every batch for an OT flow"
        pairing = torch.Generator().manual_seed(self.seed + VAL_SEED_OFFSET)
        terms = []
        model.eval()
        try:
            for x_0, x_1, t, eps in self.batches[which.start:which.stop]:
                x_0, x_1 = flow.pair(x_0, x_1, generator=pairing)
                x_t, u_t = flow.path(x_0, x_1, t, eps)
                terms.append(F.mse_loss(model(x_t, t), u_t, reduction="sum") / u_t.shape[-1])
        finally:
            model.train()
        return terms

    def total(self, terms: list[Tensor]) -> float:
        """The mean loss per row from all the batches' terms, added in batch order (so a pass
        split between threads gives the same number, bit for bit)."""
        total = torch.zeros((), device=self.device)
        for term in terms:
            total += term
        return (total / self.rows).item()
