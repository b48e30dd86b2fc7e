"""Integrate a learned velocity field dx_t/dt = v(x_t, t) from t=0 to t=1.

Fixed-step solvers (`euler`, `midpoint`, `rk4`) take `steps` equal steps; `dopri5` is an
adaptive Dormand-Prince 5(4) pair with its own step-size control (no torchdiffeq needed).
Besides x_1, every solver reports how many times it called the velocity (`nfe`) and the
path energy int_0^1 |v(x_t, t)|^2 dt, accumulated with the solver's own quadrature.

Example:
    result = integrate(lambda x_t, t: model(x_t, t), x_0, solver="rk4", steps=20)
    result.x_1, result.nfe  # -> Tensor[B, D], 80
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from study.errors import RunFailed, UsageError

SOLVERS = ("euler", "midpoint", "rk4", "dopri5")

Velocity = Callable[[Tensor, Tensor], Tensor]  # (x_t [B, D], t [B]) -> v [B, D]

# Butcher tableaux: (c, a, b). Stage i is evaluated at t + c[i] * dt, at
# x + dt * sum_j a[i][j] * k_j; the step is x + dt * sum_i b[i] * k_i.
_FIXED_TABLEAUX: dict[str, tuple[list[float], list[list[float]], list[float]]] = {
    "euler": ([0.0], [[]], [1.0]),
    "midpoint": ([0.0, 0.5], [[], [0.5]], [0.0, 1.0]),
    "rk4": (
        [0.0, 0.5, 0.5, 1.0],
        [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
        [1 / 6, 1 / 3, 1 / 3, 1 / 6],
    ),
}

# Dormand-Prince 5(4). The 7th stage is evaluated at the new point with the 5th-order
# weights, so it is the next step's first stage ("first same as last").
_DOPRI_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_DOPRI_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_DOPRI_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_DOPRI_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]

# Step-size control, as in Hairer, Norsett & Wanner (1993), Sec. II.4.
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0
# An adaptive solve that needs this many steps has met a (near-)stiff or exploding field.
_MAX_DOPRI_STEPS = 10_000


@dataclass
class OdeResult:
    """What `integrate` returns.

    x_1: Tensor[B, D], the state at t=1.
    nfe: number of velocity evaluations actually made.
    path_energy: Tensor[B], int_0^1 |v(x_t, t)|^2 dt per sample.
    trajectory: Tensor[K, B, D], states at t=0 and after each accepted step (or None).
    times: Tensor[K], the times of `trajectory` (or None).
    """

    x_1: Tensor
    nfe: int
    path_energy: Tensor
    trajectory: Tensor | None = None
    times: Tensor | None = None


class _CountingVelocity:
    """Wraps the velocity: passes t as a [B] tensor like x_t and counts the calls."""

    def __init__(self, velocity: Velocity) -> None:
        self.velocity = velocity
        self.nfe = 0

    def __call__(self, x_t: Tensor, t: float) -> Tensor:
        self.nfe += 1
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=x_t.dtype)
        v = self.velocity(x_t, t_batch)
        assert v.shape == x_t.shape, (
            f"expected velocity of shape {tuple(x_t.shape)}, got {tuple(v.shape)}"
        )
        return v


def _sq_norm(v: Tensor) -> Tensor:
    """|v|^2 per sample: Tensor[B, ...] -> Tensor[B]."""
    return v.pow(2).flatten(start_dim=1).sum(dim=1)


def _rk_stages(
    f: _CountingVelocity, x: Tensor, t: float, dt: float, c, a, k_first=None
) -> list[Tensor]:
    """Evaluate the stages k_i of one explicit Runge-Kutta step (k_first reuses stage 0)."""
    k = [f(x, t) if k_first is None else k_first]
    for c_i, a_i in zip(c[1:], a[1:], strict=True):
        x_stage = x + dt * sum(a_ij * k_j for a_ij, k_j in zip(a_i, k, strict=False) if a_ij != 0.0)
        k.append(f(x_stage, t + c_i * dt))
    return k


def integrate(
    velocity: Velocity,
    x_0: Tensor,
    *,
    solver: str = "euler",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    return_trajectory: bool = False,
) -> OdeResult:
    """Solve dx_t/dt = velocity(x_t, t) from t=0 (x_0: Tensor[B, D]) to t=1.

    `velocity(x_t, t)` gets x_t: Tensor[B, D] and t: Tensor[B] (filled with the current
    time, same device/dtype as x_0) and returns Tensor[B, D]. `steps` is the number of
    fixed steps (ignored by dopri5); `rtol`/`atol` are dopri5's tolerances (ignored by the
    fixed-step solvers). Runs under `torch.no_grad()`.
    """
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r}; expected one of: {', '.join(SOLVERS)}")
    if steps <= 0:
        raise UsageError(f"expected steps > 0, got {steps}")
    if x_0.ndim < 2:
        raise UsageError(f"expected x_0 of shape [B, D], got {tuple(x_0.shape)}")
    f = _CountingVelocity(velocity)
    with torch.no_grad():
        if solver == "dopri5":
            x_1, path_energy, states, times = _dopri5(
                f, x_0, rtol=rtol, atol=atol, keep=return_trajectory
            )
        else:
            x_1, path_energy, states, times = _fixed_step(
                f, x_0, solver, steps, keep=return_trajectory
            )
    trajectory = torch.stack(states) if return_trajectory else None
    time_tensor = (
        torch.tensor(times, dtype=x_0.dtype, device=x_0.device) if return_trajectory else None
    )
    return OdeResult(
        x_1=x_1, nfe=f.nfe, path_energy=path_energy, trajectory=trajectory, times=time_tensor
    )


def _fixed_step(f: _CountingVelocity, x_0: Tensor, solver: str, steps: int, *, keep: bool):
    """`steps` equal Runge-Kutta steps.

    Path energy per step is dt * sum_i b_i |k_i|^2: the scheme's quadrature applied to
    |v|^2 (not |sum_i b_i k_i|^2, which would be the squared mean velocity, a lower bound).
    """
    c, a, b = _FIXED_TABLEAUX[solver]
    dt = 1.0 / steps
    x_t = x_0
    path_energy = torch.zeros(x_0.shape[0], device=x_0.device, dtype=x_0.dtype)
    states, times = ([x_0], [0.0]) if keep else ([], [])
    for n in range(steps):
        t = n / steps  # not n * dt accumulated, so the last step ends exactly at t=1
        k = _rk_stages(f, x_t, t, dt, c, a)
        x_t = x_t + dt * sum(b_i * k_i for b_i, k_i in zip(b, k, strict=True) if b_i != 0.0)
        path_energy = path_energy + dt * sum(
            b_i * _sq_norm(k_i) for b_i, k_i in zip(b, k, strict=True) if b_i != 0.0
        )
        if keep:
            states.append(x_t)
            times.append((n + 1) / steps)
    return x_t, path_energy, states, times


def _rms(x: Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


def _initial_step(
    f: _CountingVelocity, x_0: Tensor, v_0: Tensor, rtol: float, atol: float
) -> float:
    """First step size from Hairer, Norsett & Wanner (1993), p. 169 (one extra evaluation)."""
    scale = atol + rtol * x_0.abs()
    d_0, d_1 = _rms(x_0 / scale), _rms(v_0 / scale)
    h_0 = 1e-6 if d_0 < 1e-5 or d_1 < 1e-5 else 0.01 * d_0 / d_1
    h_0 = min(h_0, 1.0)
    v_1 = f(x_0 + h_0 * v_0, h_0)
    d_2 = _rms((v_1 - v_0) / scale) / h_0
    if max(d_1, d_2) <= 1e-15:
        h_1 = max(1e-6, h_0 * 1e-3)
    else:
        h_1 = (0.01 / max(d_1, d_2)) ** (1 / 5)
    return min(100 * h_0, h_1, 1.0)


def _dopri5(f: _CountingVelocity, x_0: Tensor, *, rtol: float, atol: float, keep: bool):
    """Adaptive Dormand-Prince 5(4): one step size for the whole batch (RMS error norm)."""
    x_t, t = x_0, 0.0
    path_energy = torch.zeros(x_0.shape[0], device=x_0.device, dtype=x_0.dtype)
    states, times = ([x_0], [0.0]) if keep else ([], [])
    v_t = f(x_t, t)
    dt = _initial_step(f, x_t, v_t, rtol, atol)
    accepted = 0
    while t < 1.0:
        if accepted + 1 > _MAX_DOPRI_STEPS or not dt > 1e-12:  # `not >` also catches NaN
            raise RunFailed(
                f"dopri5 could not reach t=1 (t={t:.4g}, step {dt:.2g} after {accepted} steps); "
                "try a fixed-step solver or looser --rtol/--atol"
            )
        dt = min(dt, 1.0 - t)
        k = _rk_stages(f, x_t, t, dt, _DOPRI_C, _DOPRI_A, k_first=v_t)
        x_next = x_t + dt * sum(
            b_i * k_i for b_i, k_i in zip(_DOPRI_B5, k, strict=True) if b_i != 0.0
        )
        x_err = dt * sum(
            (b5 - b4) * k_i for b5, b4, k_i in zip(_DOPRI_B5, _DOPRI_B4, k, strict=True)
        )
        scale = atol + rtol * torch.maximum(x_t.abs(), x_next.abs())
        error = _rms(x_err / scale)
        if error <= 1.0:  # accept; k[6] = v(x_next, t + dt) is the next step's first stage
            path_energy = path_energy + dt * sum(
                b_i * _sq_norm(k_i) for b_i, k_i in zip(_DOPRI_B5, k, strict=True) if b_i != 0.0
            )
            t = 1.0 if dt >= 1.0 - t else t + dt
            x_t, v_t = x_next, k[6]
            accepted += 1
            if keep:
                states.append(x_t)
                times.append(t)
        if error != error:  # NaN: the step blew up, shrink hard and retry
            factor = _MIN_FACTOR
        elif error == 0.0:
            factor = _MAX_FACTOR
        else:
            factor = min(_MAX_FACTOR, max(_MIN_FACTOR, _SAFETY * error ** (-1 / 5)))
        dt = dt * factor
    return x_t, path_energy, states, times
