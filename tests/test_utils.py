"""EMAModel, the warmup + cosine LR schedule and get_checkpoint_path, on tiny known models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from study.flow_matching.utils import (
    EMAModel,
    cosine_warmup_factor,
    get_checkpoint_path,
    get_cosine_schedule_with_warmup,
)

TIGHT = {"rtol": 1e-6, "atol": 1e-7}


def _linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def _set(layer: nn.Linear, weight: list[list[float]], bias: list[float]) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))


# -- EMAModel ------------------------------------------------------------------------------

def test_shadow_starts_equal_to_the_model_and_is_a_copy() -> None:
    model = _linear([[1.0, 2.0]], [3.0])
    ema = EMAModel(model, decay=0.9)
    assert set(ema.shadow) == {"weight", "bias"}
    assert_close(ema.shadow["weight"], torch.tensor([[1.0, 2.0]]), rtol=0, atol=0)
    assert_close(ema.shadow["bias"], torch.tensor([3.0]), rtol=0, atol=0)
    _set(model, [[9.0, 9.0]], [9.0])
    assert_close(ema.shadow["weight"], torch.tensor([[1.0, 2.0]]), rtol=0, atol=0)


def test_update_is_decay_old_plus_one_minus_decay_new() -> None:
    model = _linear([[1.0, 2.0], [-4.0, 0.5]], [3.0, -1.0])
    ema = EMAModel(model, decay=0.9)
    _set(model, [[11.0, -8.0], [6.0, 0.5]], [-7.0, 1.0])
    ema.update(model)
    # 0.9 * old + 0.1 * new, by hand.
    assert_close(ema.shadow["weight"], torch.tensor([[2.0, 1.0], [-3.0, 0.5]]), **TIGHT)
    assert_close(ema.shadow["bias"], torch.tensor([2.0, -0.8]), **TIGHT)
    # A second step moves from the new shadow, not from the initial weights.
    ema.update(model)
    assert_close(ema.shadow["weight"], torch.tensor([[2.9, 0.1], [-2.1, 0.5]]), **TIGHT)
    assert_close(ema.shadow["bias"], torch.tensor([1.1, -0.62]), **TIGHT)
    # The live model is untouched by the update.
    assert_close(model.weight.detach(), torch.tensor([[11.0, -8.0], [6.0, 0.5]]), rtol=0, atol=0)


def test_decay_zero_copies_the_model() -> None:
    model = _linear([[1.0]], [1.0])
    ema = EMAModel(model, decay=0.0)
    _set(model, [[5.0]], [-2.0])
    ema.update(model)
    assert_close(ema.shadow["weight"], torch.tensor([[5.0]]), rtol=0, atol=0)
    assert_close(ema.shadow["bias"], torch.tensor([-2.0]), rtol=0, atol=0)


def test_update_follows_an_optimizer_step() -> None:
    model = _linear([[1.0, 1.0]], [0.0])
    ema = EMAModel(model, decay=0.5)
    before = {name: t.clone() for name, t in ema.shadow.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.tensor([[1.0, 2.0]])).sum().backward()
    optimizer.step()
    ema.update(model)
    for name, param in model.named_parameters():
        assert_close(ema.shadow[name], 0.5 * before[name] + 0.5 * param.detach(), **TIGHT)


def test_integer_buffers_are_not_in_the_shadow() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ema = EMAModel(model, decay=0.9)
    assert "1.num_batches_tracked" in model.state_dict()
    assert "1.num_batches_tracked" not in ema.shadow
    assert {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"} == set(
        ema.shadow)
    model.train()
    model(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)))
    ema.update(model)  # float buffers (running stats) are averaged too
    expected = 0.9 * torch.zeros(3) + 0.1 * model[1].running_mean
    assert_close(ema.shadow["1.running_mean"], expected, **TIGHT)
    assert int(model[1].num_batches_tracked) == 1


def test_state_dict_round_trip_and_updates_continue() -> None:
    model = _linear([[1.0, 2.0]], [3.0])
    saved_ema = EMAModel(model, decay=0.5)
    _set(model, [[3.0, 4.0]], [5.0])
    saved_ema.update(model)  # shadow: [[2, 3]], [4]
    state = {name: t.clone() for name, t in saved_ema.state_dict().items()}
    assert set(state) == {"weight", "bias"}
    assert all(type(t) is torch.Tensor for t in state.values())

    restored = EMAModel(_linear([[0.0, 0.0]], [0.0]), decay=0.5)
    restored.load_state_dict(state)
    assert_close(restored.shadow["weight"], torch.tensor([[2.0, 3.0]]), rtol=0, atol=0)
    assert_close(restored.shadow["bias"], torch.tensor([4.0]), rtol=0, atol=0)
    # The foreach update still writes into the loaded tensors: 0.5 * loaded + 0.5 * model.
    restored.update(model)
    assert_close(restored.shadow["weight"], torch.tensor([[2.5, 3.5]]), **TIGHT)
    assert_close(restored.shadow["bias"], torch.tensor([4.5]), **TIGHT)
    assert_close(restored.state_dict()["weight"], torch.tensor([[2.5, 3.5]]), **TIGHT)
    # Loading copied the values: the source EMA is unaffected.
    assert_close(saved_ema.shadow["weight"], torch.tensor([[2.0, 3.0]]), rtol=0, atol=0)


def test_load_state_dict_with_missing_names_raises() -> None:
    ema = EMAModel(_linear([[1.0]], [1.0]))
    with pytest.raises(KeyError, match="bias"):
        ema.load_state_dict({"weight": torch.ones(1, 1)})


def test_average_parameters_swaps_in_ema_and_restores() -> None:
    model = _linear([[1.0, 2.0]], [3.0])
    ema = EMAModel(model, decay=0.5)
    _set(model, [[3.0, 6.0]], [5.0])
    ema.update(model)  # shadow: [[2, 4]], [4]
    x = torch.tensor([[1.0, 1.0]])
    with ema.average_parameters(model) as swapped:
        assert swapped is model
        assert_close(model.weight.detach(), torch.tensor([[2.0, 4.0]]), rtol=0, atol=0)
        assert_close(model(x).detach(), torch.tensor([[10.0]]), **TIGHT)
    assert_close(model.weight.detach(), torch.tensor([[3.0, 6.0]]), rtol=0, atol=0)
    assert_close(model.bias.detach(), torch.tensor([5.0]), rtol=0, atol=0)
    assert_close(model(x).detach(), torch.tensor([[14.0]]), **TIGHT)
    # The shadow is not changed by being swapped in.
    assert_close(ema.shadow["weight"], torch.tensor([[2.0, 4.0]]), rtol=0, atol=0)


def test_average_parameters_restores_after_an_exception() -> None:
    model = _linear([[1.0, 2.0]], [3.0])
    ema = EMAModel(model, decay=0.5)
    _set(model, [[3.0, 6.0]], [5.0])
    with pytest.raises(RuntimeError, match="boom"):
        with ema.average_parameters(model):
            assert_close(model.weight.detach(), torch.tensor([[1.0, 2.0]]), rtol=0, atol=0)
            raise RuntimeError("boom")
    assert_close(model.weight.detach(), torch.tensor([[3.0, 6.0]]), rtol=0, atol=0)
    assert_close(model.bias.detach(), torch.tensor([5.0]), rtol=0, atol=0)


def test_copy_to_writes_ema_weights_permanently() -> None:
    model = _linear([[1.0, 2.0]], [3.0])
    ema = EMAModel(model, decay=0.5)
    _set(model, [[3.0, 6.0]], [5.0])
    ema.update(model)
    target = _linear([[0.0, 0.0]], [0.0])
    ema.copy_to(target)
    assert_close(target.weight.detach(), torch.tensor([[2.0, 4.0]]), rtol=0, atol=0)
    assert_close(target.bias.detach(), torch.tensor([4.0]), rtol=0, atol=0)
    # A copy, not shared storage: later EMA updates do not reach the target.
    ema.update(model)
    assert_close(target.weight.detach(), torch.tensor([[2.0, 4.0]]), rtol=0, atol=0)


def test_copy_to_keeps_integer_buffers() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    model(torch.randn(4, 2, generator=torch.Generator().manual_seed(1)))
    ema = EMAModel(model, decay=0.9)
    target = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ema.copy_to(target)
    assert int(target[1].num_batches_tracked) == 0
    assert_close(target[1].running_mean, model[1].running_mean, rtol=0, atol=0)


# -- learning-rate schedule ----------------------------------------------------------------

BASE_LR = 0.1


def _optimizer(lr: float = BASE_LR) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


def _lrs(warmup: int, total: int, steps: int, lr_scale=None) -> list[float]:
    optimizer = _optimizer()
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total, lr_scale=lr_scale)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_warmup_factor_known_values() -> None:
    assert cosine_warmup_factor(0, 4, 12) == pytest.approx(0.25)
    assert cosine_warmup_factor(3, 4, 12) == pytest.approx(1.0)
    assert cosine_warmup_factor(4, 4, 12) == pytest.approx(1.0)
    assert cosine_warmup_factor(8, 4, 12) == pytest.approx(0.5)  # halfway through the decay
    assert cosine_warmup_factor(6, 4, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_warmup_factor(12, 4, 12) == pytest.approx(0.0, abs=1e-12)
    assert cosine_warmup_factor(500, 4, 12) == pytest.approx(0.0, abs=1e-12)  # clamped
    assert cosine_warmup_factor(0, 0, 10) == pytest.approx(1.0)  # no warmup


def test_schedule_warms_up_linearly_then_decays_to_zero() -> None:
    warmup, total = 5, 25
    lrs = _lrs(warmup, total, total + 1)
    # Linear rise to the peak: (step + 1) / warmup * base.
    for step in range(warmup):
        assert lrs[step] == pytest.approx(BASE_LR * (step + 1) / warmup, rel=1e-9)
    assert lrs[warmup - 1] == pytest.approx(BASE_LR)
    assert max(lrs) == pytest.approx(BASE_LR)
    # Monotone non-increasing cosine decay afterwards.
    decay = lrs[warmup - 1:]
    assert all(b <= a + 1e-15 for a, b in zip(decay, decay[1:], strict=False))
    assert lrs[total - 1] < 0.01 * BASE_LR
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("step", [0, 2, 4, 5, 9, 15, 24])
def test_schedule_matches_the_pure_factor(step: int) -> None:
    lrs = _lrs(5, 25, 25)
    assert lrs[step] == pytest.approx(BASE_LR * cosine_warmup_factor(step, 5, 25), rel=1e-9)


def test_lr_scale_multiplies_the_factor() -> None:
    plain = _lrs(3, 12, 12)
    scaled = _lrs(3, 12, 12, lr_scale=lambda step: 0.5 if step < 6 else 2.0)
    for step in range(12):
        factor = 0.5 if step < 6 else 2.0
        assert scaled[step] == pytest.approx(factor * plain[step], rel=1e-9)


def test_scheduler_state_round_trip_continues_at_the_same_lr() -> None:
    warmup, total = 4, 20
    optimizer = _optimizer()
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["last_epoch"] == 7
    assert all(fn is None or isinstance(fn, dict) for fn in state["lr_lambdas"])

    fresh_optimizer = _optimizer()
    fresh = get_cosine_schedule_with_warmup(fresh_optimizer, warmup, total)
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 7
    assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        fresh_optimizer.step()
        fresh.step()
        assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-12)
    assert fresh.last_epoch == 12
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        BASE_LR * cosine_warmup_factor(12, warmup, total), rel=1e-9)


# -- get_checkpoint_path -------------------------------------------------------------------

def test_checkpoint_path_uses_the_env_root(isolated_run_root: Path) -> None:
    path = get_checkpoint_path("mlp-icfm-moons-none")
    assert path == str(isolated_run_root / "mlp-icfm-moons-none" / "best.pt")


def test_checkpoint_path_with_an_explicit_root(tmp_path: Path) -> None:
    root = tmp_path / "elsewhere"
    assert get_checkpoint_path("run-a", root) == str(root / "run-a" / "best.pt")
    assert get_checkpoint_path("run-a", str(root)) == str(root / "run-a" / "best.pt")


def test_checkpoint_path_is_the_studys_string(monkeypatch: pytest.MonkeyPatch) -> None:
    """The study compares it as a string: a Path would never be equal to it."""
    monkeypatch.delenv("FLOWCTL_CKPT_DIR")
    assert get_checkpoint_path("mlp-icfm-5k-none") == "study/checkpoints/mlp-icfm-5k-none/best.pt"
