"""ODE solvers against ODEs with known solutions: order of accuracy, nfe, path energy."""

from __future__ import annotations

import math

import pytest
import torch

from study.errors import RunFailed, UsageError
from study.flow_matching import solvers
from study.flow_matching.solvers import SOLVERS, OdeResult, integrate

RATE = 1.5  # dx/dt = RATE * x  ->  x_1 = x_0 * e^RATE
EXPECTED_ORDER = {"euler": 1, "midpoint": 2, "rk4": 4}
EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "rk4": 4}


def linear_velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return RATE * x_t


def time_velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = t  ->  x_1 = x_0 + 1/2."""
    return t[:, None].expand_as(x_t)


@pytest.fixture
def x_0() -> torch.Tensor:
    return torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def linear_error(x_0: torch.Tensor, solver: str, steps: int) -> float:
    result = integrate(linear_velocity, x_0, solver=solver, steps=steps)
    return (result.x_1 - x_0 * math.exp(RATE)).abs().max().item()


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
def test_linear_ode_converges_at_the_expected_order(x_0, solver):
    errors = [linear_error(x_0, solver, steps) for steps in (20, 40, 80)]
    for coarse, fine in zip(errors, errors[1:], strict=False):
        observed_order = math.log2(coarse / fine)
        assert abs(observed_order - EXPECTED_ORDER[solver]) < 0.1, (
            f"expected order {EXPECTED_ORDER[solver]}, got {observed_order:.3f} (errors {errors})"
        )


@pytest.mark.parametrize("solver", ["midpoint", "rk4", "dopri5"])
def test_time_dependent_ode_is_exact_for_second_order_and_up(x_0, solver):
    result = integrate(time_velocity, x_0, solver=solver, steps=7)
    torch.testing.assert_close(result.x_1, x_0 + 0.5, rtol=0, atol=1e-12)


def test_euler_on_time_dependent_ode_is_first_order(x_0):
    # Left Riemann sum of int_0^1 t dt with n steps is 1/2 - 1/(2n).
    for steps in (10, 20, 40):
        result = integrate(time_velocity, x_0, solver="euler", steps=steps)
        torch.testing.assert_close(result.x_1, x_0 + 0.5 - 0.5 / steps, rtol=0, atol=1e-12)


def test_dopri5_meets_tolerance_with_fewer_evaluations_than_rk4(x_0):
    adaptive = integrate(linear_velocity, x_0, solver="dopri5", rtol=1e-5, atol=1e-5)
    exact = x_0 * math.exp(RATE)
    adaptive_error = (adaptive.x_1 - exact).abs().max().item()
    # Local error control gives a global error of the order of the tolerance, not below it.
    within = (adaptive.x_1 - exact).abs() <= 10 * (1e-5 + 1e-5 * exact.abs())
    assert bool(within.all()), f"expected error within 10x tolerance, got {adaptive_error}"
    rk4_steps = next(
        steps for steps in range(1, 200) if linear_error(x_0, "rk4", steps) <= adaptive_error
    )
    assert adaptive.nfe < 4 * rk4_steps, (
        f"expected fewer than {4 * rk4_steps} evaluations, got {adaptive.nfe}"
    )
    tighter = integrate(linear_velocity, x_0, solver="dopri5", rtol=1e-8, atol=1e-8)
    assert (tighter.x_1 - exact).abs().max().item() < adaptive_error / 10
    assert tighter.nfe > adaptive.nfe


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
def test_nfe_counts_every_velocity_evaluation(x_0, solver):
    calls = []

    def counted(x_t, t):
        calls.append(t[0].item())
        return linear_velocity(x_t, t)

    result = integrate(counted, x_0, solver=solver, steps=10)
    assert result.nfe == len(calls) == 10 * EVALS_PER_STEP[solver]


def test_dopri5_nfe_counts_every_velocity_evaluation(x_0):
    calls = []

    def counted(x_t, t):
        calls.append(t[0].item())
        return linear_velocity(x_t, t)

    result = integrate(counted, x_0, solver="dopri5")
    assert result.nfe == len(calls) > 0
    assert min(calls) == 0.0 and max(calls) <= 1.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_path_energy_of_constant_velocity_is_its_squared_norm(x_0, solver):
    velocity = torch.tensor([3.0, -4.0, 12.0], dtype=torch.float64)  # |v|^2 = 169
    result = integrate(lambda x_t, t: velocity.expand_as(x_t), x_0, solver=solver, steps=7)
    torch.testing.assert_close(
        result.path_energy, torch.full((6,), 169.0, dtype=torch.float64), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(result.x_1, x_0 + velocity, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_path_energy_of_linear_ode_matches_the_integral(x_0, solver):
    # |v(x_t)|^2 = RATE^2 |x_0|^2 e^{2 RATE t}; its integral over [0, 1] in closed form.
    exact = RATE * x_0.pow(2).sum(dim=1) * (math.exp(2 * RATE) - 1) / 2
    result = integrate(linear_velocity, x_0, solver=solver, steps=400)
    torch.testing.assert_close(
        result.path_energy, exact, rtol=2e-2 if solver == "euler" else 1e-4, atol=0
    )


@pytest.mark.parametrize("solver", SOLVERS)
def test_trajectory_and_times(x_0, solver):
    result = integrate(linear_velocity, x_0, solver=solver, steps=5, return_trajectory=True)
    assert isinstance(result, OdeResult)
    assert result.trajectory is not None and result.times is not None
    steps = len(result.times) - 1
    if solver != "dopri5":
        assert steps == 5
    assert result.trajectory.shape == (steps + 1, 6, 3)
    assert result.times[0] == 0.0 and result.times[-1] == 1.0
    assert bool((result.times.diff() > 0).all())
    torch.testing.assert_close(result.trajectory[0], x_0)
    torch.testing.assert_close(result.trajectory[-1], result.x_1)
    assert result.path_energy.shape == (6,)


def test_no_trajectory_by_default(x_0):
    result = integrate(linear_velocity, x_0, solver="rk4", steps=3)
    assert result.trajectory is None and result.times is None


def test_velocity_gets_batched_time_without_grad():
    x_0 = torch.randn(4, 2, dtype=torch.float32, requires_grad=True)
    seen = []

    def velocity(x_t, t):
        seen.append((t.shape, t.dtype, torch.is_grad_enabled()))
        return torch.zeros_like(x_t)

    result = integrate(velocity, x_0, solver="midpoint", steps=2)
    assert seen and all(item == (torch.Size([4]), torch.float32, False) for item in seen)
    assert not result.x_1.requires_grad


@pytest.mark.parametrize("solver", SOLVERS)
def test_float32_input_stays_float32(solver):
    x_0 = torch.randn(5, 2)
    result = integrate(linear_velocity, x_0, solver=solver, steps=4)
    assert result.x_1.dtype == torch.float32 and result.path_energy.dtype == torch.float32


def test_unknown_solver_lists_the_solvers(x_0):
    with pytest.raises(UsageError, match="unknown solver 'heun'.*euler, midpoint, rk4, dopri5"):
        integrate(linear_velocity, x_0, solver="heun")


@pytest.mark.parametrize("steps", [0, -3])
def test_non_positive_steps_is_a_usage_error(x_0, steps):
    with pytest.raises(UsageError, match="steps > 0"):
        integrate(linear_velocity, x_0, solver="euler", steps=steps)


def test_dopri5_gives_up_on_a_nan_velocity(x_0):
    with pytest.raises(RunFailed, match="dopri5 could not reach t=1"):
        integrate(lambda x_t, t: torch.full_like(x_t, float("nan")), x_0, solver="dopri5")


def test_dopri5_gives_up_on_a_stiff_velocity(x_0, monkeypatch):
    monkeypatch.setattr(solvers, "_MAX_DOPRI_STEPS", 100)  # the real cap takes ~15 s to hit
    with pytest.raises(RunFailed, match="dopri5 could not reach t=1"):
        integrate(lambda x_t, t: -1e6 * x_t, x_0, solver="dopri5")
