"""Sample quality during training (`--eval-every K`): W2 and MMD of the EMA weights.

Flow-matching validation loss is a weak signal of sample quality; this is the strong one.
Everything random is fixed once from the seed: the held-out subset (`eval_samples` rows of
the test split, else the val split) and the source draws x_0, so successive evaluations
differ only by the weights. Samples are integrated with Euler, 100 steps (`flowctl eval`'s
default), de-normalised, and compared in data units with exact W2 (POT) and RBF MMD^2 at
0.5, 1 and 2 x the subset's median pairwise distance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from study.data.normalize import denormalize
from study.data.toy import source_like
from study.flow_matching.metrics import median_bandwidths, mmd_rbf, wasserstein2
from study.flow_matching.optim import EMAModel
from study.flow_matching.solvers import integrate
from study.seeds import stream_generator

SOLVER, STEPS = "euler", 100


class SampleQuality:
    def __init__(self, heldout: Tensor, stats: dict[str, Tensor], *, n: int, seed: int,
                 source: str, device: torch.device, user_metric=None):
        """heldout: raw rows [M, D] (data units); n: rows compared (at most M);
        user_metric: user_metrics.user_metric's callable, its names logged as eval/NAME."""
        self.user_metric = user_metric
        generator = stream_generator(seed, "eval")  # the run's other streams are untouched
        n = min(n, len(heldout))
        self.target = heldout[torch.randperm(len(heldout), generator=generator)[:n]].float().cpu()
        self.x_0 = source_like(source, torch.empty(n, heldout.shape[1]), generator, generator)
        self.stats, self.device = stats, device
        self.bandwidths = median_bandwidths(self.target)

    @torch.no_grad()
    def __call__(self, model: nn.Module, ema: EMAModel) -> dict[str, float]:
        """{"eval/w2", "eval/mmd", "eval/NAME" per user metric} of `model` with `ema`'s
        weights swapped in."""
        with ema.average_parameters(model):
            model.eval()
            x_1 = integrate(model, self.x_0.to(self.device), solver=SOLVER, steps=STEPS).x_1
            model.train()
        samples = denormalize(x_1.float().cpu(), self.stats)
        if not torch.isfinite(samples).all():
            return {"eval/w2": float("inf"), "eval/mmd": float("inf")}
        scores = {"eval/w2": wasserstein2(samples, self.target),
                  "eval/mmd": mmd_rbf(samples, self.target, bandwidths=self.bandwidths)}
        if self.user_metric is not None:
            scores.update({f"eval/{name}": value
                           for name, value in self.user_metric(samples, self.target).items()})
        return scores
