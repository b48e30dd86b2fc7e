"""Minibatch optimal-transport plans: the expensive, deterministic half of OT pairing.

Every function takes x_0, x_1 [B, D] and solves on the CPU in float64 (POT releases the GIL
while it solves, so batches.py can run these on worker threads while the step trains).
The cheap half, applying a plan to a batch with the run's OT generator, stays in flows.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

# Largest relative error in a Sinkhorn plan's marginals that sbcfm accepts. Sampling B pairs
# with replacement already weights each point by Poisson(1) noise, so 10% is harmless; a
# numerically broken plan is off by far more (or not finite).
SINKHORN_TOL = 0.1
# POT warns about Sinkhorn's numerical errors even with warn=False; entropic_plan checks the
# plan itself and says so once, in its own words.
warnings.filterwarnings("ignore", message="Warning: numerical errors", module="ot.bregman")


def exact_plan(cost: np.ndarray) -> np.ndarray:
    """Exact OT plan [B, B] for uniform weights (`ot.emd`): a permutation matrix / B.

    The cost is divided by its max first: the plan is scale-invariant, and costs of order one
    keep the network simplex's tolerances meaningful.
    """
    import ot  # POT pulls in scipy: load it only when a flow pairs a batch

    if cost.max() > 0:
        cost = cost / cost.max()
    weights = ot.unif(cost.shape[0])
    return ot.emd(weights, weights, cost, numItermax=1_000_000)


def marginal_error(plan: np.ndarray) -> float:
    """max |B * marginal - 1| over both marginals of a [B, B] plan; inf if not finite."""
    if not np.all(np.isfinite(plan)):
        return float("inf")
    batch = plan.shape[0]
    rows, cols = plan.sum(axis=1) * batch, plan.sum(axis=0) * batch
    return float(max(np.abs(rows - 1).max(), np.abs(cols - 1).max()))


def squared_cost(x_0: Tensor, x_1: Tensor) -> np.ndarray:
    """Squared Euclidean cost matrix C[i, j] = |x_0[i] - x_1[j]|^2 as CPU float64: [B, B]."""
    a = x_0.detach().to("cpu", torch.float64).numpy()
    b = x_1.detach().to("cpu", torch.float64).numpy()
    import ot

    return ot.dist(a, b, metric="sqeuclidean")


def exact_ot_permutation(x_0: Tensor, x_1: Tensor) -> Tensor:
    """perm [B] (CPU int64) such that x_0[i] <-> x_1[perm[i]] is the exact OT matching.

    Solved on CPU in float64 by `ot.emd` on the squared Euclidean cost.
    """
    perm = np.argmax(exact_plan(squared_cost(x_0, x_1)), axis=1)
    # A vertex of the Birkhoff polytope is a permutation; anything else is a solver failure.
    assert len(np.unique(perm)) == len(perm), (
        f"expected a permutation plan from ot.emd, got {len(np.unique(perm))} distinct targets "
        f"for {len(perm)} sources"
    )
    return torch.from_numpy(perm).long()


def entropic_plan(x_0: Tensor, x_1: Tensor, sigma: float) -> np.ndarray:
    """The entropic OT plan [B, B] (float64, sums to 1) between the rows of x_0 and x_1,
    for the squared Euclidean cost with reg = 2 sigma^2 (the cost is not rescaled).

    Plain Sinkhorn (fast) on the cost minus its row minima, then minus the column minima:
    the shift changes <P, C> by a constant for every P with these marginals, so the plan is
    the same, but every row and column of exp(-C / reg) keeps an entry of 1 instead of
    underflowing to 0 (which, at reg = 0.02, one outlier is enough to cause). An unconverged
    plan is used as is while its marginals are within 10%; when reg is too small for Sinkhorn
    in float64, the exact OT plan (the sigma -> 0 limit) is used, with a RuntimeWarning.
    """
    cost = squared_cost(x_0, x_1)
    cost = cost - cost.min(axis=1, keepdims=True)
    cost = cost - cost.min(axis=0, keepdims=True)
    import ot

    weights = ot.unif(x_0.shape[0])
    # Not warnings.catch_warnings(): it is not thread-safe, and this runs on worker threads.
    with np.errstate(all="ignore"):
        plan = ot.sinkhorn(weights, weights, cost, reg=2 * sigma**2, method="sinkhorn", warn=False)
    if marginal_error(plan) <= SINKHORN_TOL:
        return plan / plan.sum()
    warnings.warn(
        f"sbcfm: Sinkhorn failed for sigma={sigma} (reg {2 * sigma**2:.3g} is too "
        "small for this batch's costs); pairing by exact OT instead",
        RuntimeWarning, stacklevel=3,
    )
    return exact_plan(cost)
