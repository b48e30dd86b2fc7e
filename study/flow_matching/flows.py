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
import warnings

import numpy as np
import torch
from torch import Tensor

from study.errors import UsageError

# Guards t (1 - t) in the Schrodinger-bridge target, whose coefficient diverges at t = 0, 1.
_SB_EPS = 1e-8
# Largest relative error in a Sinkhorn plan's marginals that sbcfm accepts. Sampling B pairs
# with replacement already weights each point by Poisson(1) noise, so 10% is harmless; a
# numerically broken plan is off by far more (or not finite).
_SINKHORN_TOL = 0.1


def _check_batch(x_0: Tensor, x_1: Tensor) -> None:
    assert x_0.ndim == 2, f"expected x_0 of shape [B, D], got {tuple(x_0.shape)}"
    assert x_1.shape == x_0.shape, (
        f"expected x_1 with the shape of x_0 {tuple(x_0.shape)}, got {tuple(x_1.shape)}"
    )


def _check_path_args(x_0: Tensor, x_1: Tensor, t: Tensor, eps: Tensor) -> None:
    _check_batch(x_0, x_1)
    assert t.shape == (x_0.shape[0],), f"expected t of shape [{x_0.shape[0]}], got {tuple(t.shape)}"
    assert eps.shape == x_0.shape, f"expected eps of shape {tuple(x_0.shape)}, got {tuple(eps.shape)}"


def _exact_plan(cost: np.ndarray) -> np.ndarray:
    """Exact OT plan [B, B] for uniform weights (`ot.emd`): a permutation matrix / B.

    The cost is divided by its max first: the plan is scale-invariant, and costs of order one
    keep the network simplex's tolerances meaningful.
    """
    import ot  # POT pulls in scipy: load it only when a flow pairs a batch

    if cost.max() > 0:
        cost = cost / cost.max()
    weights = ot.unif(cost.shape[0])
    return ot.emd(weights, weights, cost, numItermax=1_000_000)


def _marginal_error(plan: np.ndarray) -> float:
    """max |B * marginal - 1| over both marginals of a [B, B] plan; inf if not finite."""
    if not np.all(np.isfinite(plan)):
        return float("inf")
    batch = plan.shape[0]
    rows, cols = plan.sum(axis=1) * batch, plan.sum(axis=0) * batch
    return float(max(np.abs(rows - 1).max(), np.abs(cols - 1).max()))


def _sq_cost(x_0: Tensor, x_1: Tensor) -> np.ndarray:
    """Squared Euclidean cost matrix C[i, j] = |x_0[i] - x_1[j]|^2 as CPU float64: [B, B]."""
    a = x_0.detach().to("cpu", torch.float64).numpy()
    b = x_1.detach().to("cpu", torch.float64).numpy()
    import ot

    return ot.dist(a, b, metric="sqeuclidean")


class FlowMatcher:
    """Base class: independent coupling (identity `pair`); subclasses give `path`."""

    name = "base"

    def __init__(self, *, sigma: float) -> None:
        self.sigma = float(sigma)

    def pair(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor]:
        """Re-pair the minibatch (OT-based flows); identity by default. x_0, x_1: [B, D]."""
        _check_batch(x_0, x_1)
        return x_0, x_1

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

    def pair(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor]:
        """Return (x_0, x_1[perm]) with perm the optimal assignment. x_0, x_1: [B, D]."""
        _check_batch(x_0, x_1)
        perm = exact_ot_permutation(x_0, x_1)
        return x_0, x_1[perm.to(x_1.device)]


def exact_ot_permutation(x_0: Tensor, x_1: Tensor) -> Tensor:
    """perm [B] (CPU int64) such that x_0[i] <-> x_1[perm[i]] is the exact OT matching.

    Solved on CPU in float64 by `ot.emd` on the squared Euclidean cost.
    """
    perm = np.argmax(_exact_plan(_sq_cost(x_0, x_1)), axis=1)
    # A vertex of the Birkhoff polytope is a permutation; anything else is a solver failure.
    assert len(np.unique(perm)) == len(perm), (
        f"expected a permutation plan from ot.emd, got {len(np.unique(perm))} distinct targets "
        f"for {len(perm)} sources"
    )
    return torch.from_numpy(perm).long()


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

    def __init__(self, *, sigma: float) -> None:
        if not sigma > 0:
            raise UsageError(f"flow 'sbcfm' needs sigma > 0 (entropic reg = 2 sigma^2), got {sigma}")
        super().__init__(sigma=sigma)

    def pair(self, x_0: Tensor, x_1: Tensor, generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor]:
        """Return (x_0[i], x_1[j]) for B index pairs drawn from the entropic plan. [B, D] each.

        The draw runs on the generator's device (CPU when there is none).
        """
        _check_batch(x_0, x_1)
        batch = x_0.shape[0]
        if batch * batch > 2**24:  # torch.multinomial's limit on the number of categories
            raise UsageError(f"flow 'sbcfm' needs batch_size <= 4096, got {batch}")
        plan = torch.from_numpy(self.plan(x_0, x_1)).flatten()
        if generator is not None:
            plan = plan.to(generator.device)
        flat = torch.multinomial(plan, batch, replacement=True, generator=generator)
        flat = flat.to(x_0.device)
        return x_0[flat // batch], x_1[flat % batch]

    def plan(self, x_0: Tensor, x_1: Tensor) -> np.ndarray:
        """The entropic OT plan [B, B] (float64, sums to 1) between the rows of x_0 and x_1.

        Plain Sinkhorn (fast) on the cost minus its row minima, then minus the column minima:
        the shift changes <P, C> by a constant for every P with these marginals, so the plan is
        the same, but every row and column of exp(-C / reg) keeps an entry of 1 instead of
        underflowing to 0 (which, at reg = 0.02, one outlier is enough to cause). An unconverged
        plan is used as is while its marginals are within 10%; when reg is too small for Sinkhorn
        in float64, the exact OT plan (the sigma -> 0 limit) is used, with a RuntimeWarning.
        """
        cost = _sq_cost(x_0, x_1)
        cost = cost - cost.min(axis=1, keepdims=True)
        cost = cost - cost.min(axis=0, keepdims=True)
        import ot

        weights = ot.unif(x_0.shape[0])
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # POT's "did not converge" / "numerical errors"
            plan = ot.sinkhorn(weights, weights, cost, reg=2 * self.sigma**2, method="sinkhorn")
        if _marginal_error(plan) <= _SINKHORN_TOL:
            return plan / plan.sum()
        warnings.warn(
            f"sbcfm: Sinkhorn failed for sigma={self.sigma} (reg {2 * self.sigma**2:.3g} is too "
            "small for this batch's costs); pairing by exact OT instead",
            RuntimeWarning, stacklevel=3,
        )
        return _exact_plan(cost)

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
