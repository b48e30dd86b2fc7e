"""Velocity networks: shapes, gradients, reproducible init, registry and error messages."""

from __future__ import annotations

import itertools

import pytest
import torch

from study.errors import UsageError
from study.flow_matching import config
from study.flow_matching.models import ACTIVATIONS, MODELS, build_model, count_parameters

DIM = 3
CASES = list(itertools.product(sorted(MODELS), sorted(ACTIVATIONS)))


def _model(arch: str, activation: str, *, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, DIM, width=16, depth=2, activation=activation)


def test_registries_match_config_names():
    assert tuple(MODELS) == config.ARCH_NAMES
    assert tuple(ACTIVATIONS) == config.ACTIVATION_NAMES


@pytest.mark.parametrize(("arch", "activation"), CASES)
@pytest.mark.parametrize("batch", [1, 5])
def test_output_shape(arch, activation, batch):
    model = _model(arch, activation)
    x, t = torch.randn(batch, DIM), torch.rand(batch)
    v = model(x, t)
    assert v.shape == (batch, DIM)
    assert torch.isfinite(v).all()


@pytest.mark.parametrize(("arch", "activation"), CASES)
def test_gradients_reach_every_parameter(arch, activation):
    model = _model(arch, activation)
    x, t = torch.randn(4, DIM, requires_grad=True), torch.rand(4)
    model(x, t).pow(2).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"expected a gradient for {name}, got None"
        assert torch.isfinite(param.grad).all(), f"expected finite gradient for {name}"
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(("arch", "activation"), CASES)
def test_init_is_deterministic_under_manual_seed(arch, activation):
    first = _model(arch, activation, seed=7).state_dict()
    second = _model(arch, activation, seed=7).state_dict()
    other = _model(arch, activation, seed=8).state_dict()
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key])
    assert any(not torch.equal(first[key], other[key]) for key in first)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_time_changes_output_and_scalar_time_broadcasts(arch):
    model = _model(arch, "selu")
    x = torch.randn(4, DIM)
    v_0, v_1 = model(x, torch.zeros(4)), model(x, torch.ones(4))
    assert not torch.allclose(v_0, v_1)
    torch.testing.assert_close(model(x, torch.tensor(0.0)), v_0)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_bad_shapes_are_assertions(arch):
    model = _model(arch, "selu")
    with pytest.raises(AssertionError, match="expected t of shape"):
        model(torch.randn(4, DIM), torch.rand(3))
    with pytest.raises(AssertionError, match="expected x with 3 features"):
        model(torch.randn(4, DIM + 1), torch.rand(4))


def test_count_parameters_of_tong_mlp():
    model = build_model("mlp", 2, width=64, depth=3, activation="selu")
    # (2 + 1) * 64 + 64, then 2 x (64 * 64 + 64), then 64 * 2 + 2
    assert count_parameters(model) == 256 + 2 * 4160 + 130


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_count_parameters_positive_and_grows_with_width(arch):
    small = build_model(arch, 2, width=8, depth=2, activation="relu")
    large = build_model(arch, 2, width=32, depth=2, activation="relu")
    assert 0 < count_parameters(small) < count_parameters(large)


def test_unknown_arch_is_one_line_listing_choices():
    with pytest.raises(UsageError) as info:
        build_model("foo", 2, width=8, depth=2, activation="selu")
    message = str(info.value)
    assert message == "unknown arch 'foo'; choose one of: mlp, resmlp"


def test_unknown_activation_is_one_line_listing_choices():
    with pytest.raises(UsageError) as info:
        build_model("mlp", 2, width=8, depth=2, activation="swish")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown activation 'swish'; choose one of: ")
    assert all(name in message for name in config.ACTIVATION_NAMES)


@pytest.mark.parametrize("key", ["dim", "width", "depth"])
def test_non_positive_sizes_are_usage_errors(key):
    sizes = {"dim": 2, "width": 8, "depth": 2, key: 0}
    with pytest.raises(UsageError, match=f"{key} must be a positive integer"):
        build_model("mlp", sizes["dim"], width=sizes["width"], depth=sizes["depth"],
                    activation="selu")
