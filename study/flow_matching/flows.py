"""Flow matchers: how to pair a minibatch, and the conditional path x_t with its target u_t.

The trainer calls exactly `flow.pair`, `flow.path` and `flow(x_0, x_1, generator)`:

    t, x_t, u_t = flow(x_0, x_1, generator=gen)    # t: [B], x_t, u_t: [B, D]
    loss = ((model(x_t, t) - u_t) ** 2).mean()

x_0 is the source sample (noise for `fm`), x_1 the data. Randomness comes only from the
`generator` passed in, so a seeded generator gives the same batch twice and the global RNG
is never touched. Build one by name with `build_flow`; names match `config.FLOW_NAMES`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from study.errors import UsageError
from study.flow_matching.ot_plans import entropic_plan, exact_ot_permutation

# Guards t (1 - t) in the Schrodinger-bridge target, whose coefficient diverges at t = 0, 1.
_SB_EPS = 1e-8


def _check_batch(x_0: Tensor, x_1: Tensor) -> None:
    assert x_0.ndim == 2, f"expected x_0 of shape [B, D], got {tuple(x_0.shape)}"
    assert x_1.shape == x_0.shape, (
        f"expected x_1 with the shape of x_0 {tuple(x_0.shape)}, got {tuple(x_1.shape)}"
    )


def _check_path_args(x_0: Tensor, x_1: Tensor, t: Tensor, eps: Tensor) -> None:
    _check_batch(x_0, x_1)
    assert t.shape == (x_0.shape[0],), f"expected t of shape [{x_0.shape[0]}], got {tuple(t.shape)}"
    assert eps.shape == x_0.shape, f"expected eps of shape {tuple(x_0.shape)}, got {tuple(eps.shape)}"


class FlowMatcher:
    """Base class: independent coupling (identity `pair`); subclasses give `path`.

    Pairing has two halves: `pairing_plan` (deterministic, possibly expensive: an OT solve
    on the CPU; batches.py may run it ahead on a worker thread) and `apply_pairing` (cheap,
    the only part that draws from the generator). `pair` does both.
    """

    name = "base"
    # Whether pairing_plan does real work worth running ahead. False: the pairing is the
    # identity and draws nothing, so batches.py may finish such a batch (paths too) early.
    solves_a_plan = False

    def __init__(self, *, sigma: float) -> None:
        self.sigma = float(sigma)

    def pairing_plan(self, x_0: Tensor, x_1: Tensor):
        """What `apply_pairing` needs for this batch (None: nothing). x_0, x_1: [B, D]."""
        return None

    def apply_pairing(self, x_0: Tensor, x_1: Tensor, plan, generator: torch.Generator | None
                      ) -> tuple[Tensor, Tensor]:
        return x_0, x_1

    def pair(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor]:
        """Re-pair the minibatch (OT-based flows); identity by default. x_0, x_1: [B, D]."""
        _check_batch(x_0, x_1)
        return self.apply_pairing(x_0, x_1, self.pairing_plan(x_0, x_1), generator)

    def path(self, x_0: Tensor, x_1: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Pure formula: (x_t, u_t), both [B, D], for t: [B] and eps: [B, D] ~ N(0, I)."""
        raise NotImplementedError

    def __call__(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """Pair, then draw t ~ U(0, 1) [B] and eps [B, D] from `generator`; return (t, x_t, u_t).

        Draw order (pair, t, eps) is fixed so that a seeded generator reproduces the batch.
        """
        x_0, x_1 = self.pair(x_0, x_1, generator=generator)
        t = torch.rand(x_1.shape[0], generator=generator, device=x_1.device, dtype=x_1.dtype)
        eps = torch.randn(x_1.shape, generator=generator, device=x_1.device, dtype=x_1.dtype)
        x_t, u_t = self.path(x_0, x_1, t, eps)
        return t, x_t, u_t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class ICFM(FlowMatcher):
    """Independent CFM (Tong et al. 2023), the straight-line path with constant noise:

    x_t = t x_1 + (1 - t) x_0 + sigma eps,   u_t = x_1 - x_0.
    """

    name = "icfm"

    def path(self, x_0: Tensor, x_1: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        _check_path_args(x_0, x_1, t, eps)
        t = t[:, None]
        x_t = t * x_1 + (1 - t) * x_0 + self.sigma * eps
        return x_t, x_1 - x_0


class OTCFM(ICFM):
    """OT-CFM (Tong et al. 2023): the ICFM path on a minibatch paired by exact optimal transport.

    The plan minimises sum_ij P_ij |x_0[i] - x_1[j]|^2 with uniform marginals (`ot.emd`); for
    equal batch sizes it is a permutation matrix / B, so pairing reorders x_1 without
    duplicating or dropping points. Exact OT is deterministic: the generator is unused.
    """

    name = "otcfm"
    solves_a_plan = True

    def pairing_plan(self, x_0: Tensor, x_1: Tensor) -> Tensor:
        """perm [B] (CPU int64), the optimal assignment x_0[i] <-> x_1[perm[i]]."""
        return exact_ot_permutation(x_0, x_1)

    def apply_pairing(self, x_0: Tensor, x_1: Tensor, plan: Tensor, generator=None
                      ) -> tuple[Tensor, Tensor]:
        """(x_0, x_1[perm]): x_1 reordered, nothing duplicated or dropped."""
        return x_0, x_1[plan.to(x_1.device)]


class OTCFMSampled(OTCFM):
    """OT-CFM as torchcfm trains it: B pairs drawn with replacement from the exact plan.

    torchcfm's `OTPlanSampler.sample_plan` draws B index pairs from the plan P = perm / B;
    that is B rows i drawn uniformly with replacement, each with its match perm[i]. About 63%
    of the rows appear, some twice or more. Drawn with the run's OT generator (CPU when
    there is none), so a resumed run draws the same pairs.
    """

    name = "otcfm-sampled"

    def apply_pairing(self, x_0: Tensor, x_1: Tensor, plan: Tensor, generator=None
                      ) -> tuple[Tensor, Tensor]:
        """(x_0[i], x_1[perm[i]]) for B rows i drawn with replacement. [B, D] each."""
        batch = x_0.shape[0]
        device = generator.device if generator is not None else "cpu"
        rows = torch.randint(batch, (batch,), generator=generator, device=device)
        matches = plan.to(device)[rows]
        return x_0[rows.to(x_0.device)], x_1[matches.to(x_1.device)]


class FM(FlowMatcher):
    """Flow matching with the optimal-transport Gaussian path (Lipman et al. 2023).

    x_0 ~ N(0, I) is the noise (eps is unused):
    mu_t = t x_1,  sigma_t = 1 - (1 - sigma) t,  x_t = mu_t + sigma_t x_0,
    u_t = (x_1 - (1 - sigma) x_t) / (1 - (1 - sigma) t),
    computed as the equal, division-free x_1 - (1 - sigma) x_0 (finite at t = 1, sigma = 0).
    """

    name = "fm"

    def path(self, x_0: Tensor, x_1: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        _check_path_args(x_0, x_1, t, eps)
        t = t[:, None]
        sigma_t = 1 - (1 - self.sigma) * t
        x_t = t * x_1 + sigma_t * x_0
        return x_t, x_1 - (1 - self.sigma) * x_0


class VP(FlowMatcher):
    """Variance-preserving (trigonometric) interpolant, as in Tong et al. 2023 / Albergo et al.:

    mu_t = cos(pi t / 2) x_0 + sin(pi t / 2) x_1,   x_t = mu_t + sigma eps,
    u_t = (pi / 2) (cos(pi t / 2) x_1 - sin(pi t / 2) x_0).
    """

    name = "vp"

    def path(self, x_0: Tensor, x_1: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        _check_path_args(x_0, x_1, t, eps)
        angle = (math.pi / 2) * t[:, None]
        cos, sin = torch.cos(angle), torch.sin(angle)
        x_t = cos * x_0 + sin * x_1 + self.sigma * eps
        u_t = (math.pi / 2) * (cos * x_1 - sin * x_0)
        return x_t, u_t


class SBCFM(FlowMatcher):
    """Schrodinger-bridge CFM (Tong et al. 2023): entropic-OT pairs and a Brownian-bridge path.

    Pairs (i, j) are drawn B times, with replacement, from the Sinkhorn plan for the squared
    Euclidean cost with reg = 2 sigma^2 (the cost is not rescaled: reg is in its units). Then
    mu_t = t x_1 + (1 - t) x_0,  sigma_t = sigma sqrt(t (1 - t)),  x_t = mu_t + sigma_t eps,
    u_t = (1 - 2t) / (2 t (1 - t)) (x_t - mu_t) + x_1 - x_0,  with t (1 - t) clamped >= 1e-8.
    """

    name = "sbcfm"
    solves_a_plan = True

    def __init__(self, *, sigma: float) -> None:
        if not sigma > 0:
            raise UsageError(f"flow 'sbcfm' needs sigma > 0 (entropic reg = 2 sigma^2), got {sigma}")
        super().__init__(sigma=sigma)

    def plan(self, x_0: Tensor, x_1: Tensor) -> np.ndarray:
        """The entropic OT plan [B, B] (float64, sums to 1); see ot_plans.entropic_plan."""
        return entropic_plan(x_0, x_1, self.sigma)

    def pairing_plan(self, x_0: Tensor, x_1: Tensor) -> Tensor:
        """The entropic plan, flattened: [B * B] float64 on the CPU."""
        batch = x_0.shape[0]
        if batch * batch > 2**24:  # torch.multinomial's limit on the number of categories
            raise UsageError(f"flow 'sbcfm' needs batch_size <= 4096, got {batch}")
        return torch.from_numpy(self.plan(x_0, x_1)).flatten()

    def apply_pairing(self, x_0: Tensor, x_1: Tensor, plan: Tensor, generator=None
                      ) -> tuple[Tensor, Tensor]:
        """(x_0[i], x_1[j]) for B index pairs drawn from the plan. [B, D] each.

        The draw runs on the generator's device (CPU when there is none).
        """
        batch = x_0.shape[0]
        if generator is not None:
            plan = plan.to(generator.device)
        flat = torch.multinomial(plan, batch, replacement=True, generator=generator)
        flat = flat.to(x_0.device)
        return x_0[flat // batch], x_1[flat % batch]

    def path(self, x_0: Tensor, x_1: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        _check_path_args(x_0, x_1, t, eps)
        t = t[:, None]
        mu_t = t * x_1 + (1 - t) * x_0
        t_one_minus_t = t * (1 - t)
        x_t = mu_t + self.sigma * torch.sqrt(t_one_minus_t) * eps
        u_t = (1 - 2 * t) / (2 * t_one_minus_t.clamp_min(_SB_EPS)) * (x_t - mu_t) + x_1 - x_0
        return x_t, u_t


class Reflow(ICFM):
    """Rectified flow / reflow (Liu et al. 2023): the ICFM path on pairs (x_0, ODE_teacher(x_0)).

    The pairs arrive already coupled row by row (`reflow.coupled_sources`), so `pair` is the
    identity: re-pairing them would throw away the teacher's coupling.
    x_t = t x_1 + (1 - t) x_0 + sigma eps,   u_t = x_1 - x_0.
    """

    name = "reflow"


FLOWS: dict[str, type[FlowMatcher]] = {
    "icfm": ICFM,
    "otcfm": OTCFM,
    "otcfm-sampled": OTCFMSampled,
    "fm": FM,
    "vp": VP,
    "sbcfm": SBCFM,
    "reflow": Reflow,
}


def build_flow(name: str, *, sigma: float) -> FlowMatcher:
    """The flow matcher called `name` with noise level `sigma`, e.g. `build_flow("otcfm", sigma=0.1)`."""
    if name not in FLOWS:
        raise UsageError(f"unknown flow {name!r}; choose one of: {', '.join(FLOWS)}")
    if not sigma >= 0:
        raise UsageError(f"sigma must be >= 0, got {sigma}")
    return FLOWS[name](sigma=sigma)
