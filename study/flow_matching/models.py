"""Velocity networks v_theta(x_t, t): small MLPs for low-dimensional flow matching.

Every model maps `x: [B, D]` and `t: [B]` to a velocity `[B, D]` (the contract any network
meets: docs/networks.md). Build one by name with `build_model`; the names in `MODELS` and `ACTIVATIONS` match `config.ARCH_NAMES` and
`config.ACTIVATION_NAMES`. Initialisation is torch's default, so a model built right after
`torch.manual_seed(seed)` is reproducible.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from study.errors import UsageError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "selu": nn.SELU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def _time_column(t: Tensor, x: Tensor) -> Tensor:
    """Check t against x and return it as [B] in x's dtype; a 0-dim t is shared by the batch.

    ODE solvers call the field with a scalar t, hence the broadcast.
    """
    assert x.ndim == 2, f"expected x of shape [B, D], got {tuple(x.shape)}"
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    assert t.shape == (x.shape[0],), f"expected t of shape [{x.shape[0]}], got {tuple(t.shape)}"
    return t.to(dtype=x.dtype)


class MLP(nn.Module):
    """v(x, t) = MLP(cat[x, t]): `depth` hidden layers of `width`, linear output.

    With width=64, depth=3 and SELU this is the 2-D network of Tong et al. (2023).
    """

    def __init__(self, dim: int, *, width: int, depth: int, activation: str) -> None:
        super().__init__()
        self.dim = dim
        layers: list[nn.Module] = []
        in_features = dim + 1
        for _ in range(depth):
            layers += [nn.Linear(in_features, width), ACTIVATIONS[activation]()]
            in_features = width
        layers.append(nn.Linear(in_features, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: [B, D], t: [B] (or 0-dim) -> velocity [B, D]."""
        t = _time_column(t, x)
        assert x.shape[1] == self.dim, f"expected x with {self.dim} features, got {x.shape[1]}"
        return self.net(torch.cat([x, t[:, None]], dim=1))


def sinusoidal_embedding(t: Tensor, dim: int, *, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style embedding of t in [0, 1]: [B] -> [B, dim].

    t is scaled by 1000 first (as in DDPM) so the fastest frequencies resolve small steps in t.
    Odd `dim` gets a zero last column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / max(half, 1)
    )
    angles = 1000.0 * t[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class ResidualBlock(nn.Module):
    """h + Linear(act(Linear(LayerNorm(h)) + Linear(temb))): a pre-norm block conditioned on t."""

    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc_in = nn.Linear(width, width)
        self.time_proj = nn.Linear(width, width)
        self.act = ACTIVATIONS[activation]()
        self.fc_out = nn.Linear(width, width)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        """h: [B, W], temb: [B, W] -> [B, W]."""
        return h + self.fc_out(self.act(self.fc_in(self.norm(h)) + self.time_proj(temb)))


class ResMLP(nn.Module):
    """Residual MLP: input projection, `depth` time-conditioned residual blocks, LayerNorm, linear.

    The time embedding is sinusoidal(t) -> Linear -> act, added inside every block.
    """

    def __init__(self, dim: int, *, width: int, depth: int, activation: str) -> None:
        super().__init__()
        self.dim = dim
        self.width = width
        self.input_proj = nn.Linear(dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), ACTIVATIONS[activation]())
        self.blocks = nn.ModuleList(ResidualBlock(width, activation) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: [B, D], t: [B] (or 0-dim) -> velocity [B, D]."""
        t = _time_column(t, x)
        assert x.shape[1] == self.dim, f"expected x with {self.dim} features, got {x.shape[1]}"
        temb = self.time_mlp(sinusoidal_embedding(t, self.width))
        h = self.input_proj(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.output(self.out_norm(h))


MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "resmlp": ResMLP,
}


def build_model(arch: str, dim: int, *, width: int, depth: int, activation: str) -> nn.Module:
    """A fresh built-in velocity network for D=`dim` data; seed torch first for
    reproducibility. A run's network (built-in or an import path) is built by
    networks.build_network, which calls the same classes.

    Example: `build_model("mlp", 2, width=64, depth=3, activation="selu")`.
    """
    if arch not in MODELS:
        raise UsageError(f"unknown arch {arch!r}; choose one of: {', '.join(MODELS)}")
    check_model_args(dim=dim, width=width, depth=depth, activation=activation)
    return MODELS[arch](dim, width=width, depth=depth, activation=activation)


def check_model_args(*, width: int, depth: int, activation: str, dim: int = 1) -> None:
    """UsageError naming the first impossible argument of a built-in network."""
    if activation not in ACTIVATIONS:
        raise UsageError(
            f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}"
        )
    for key, value in (("dim", dim), ("width", width), ("depth", depth)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UsageError(f"{key} must be a positive integer, got {value!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not) in `model`."""
    return sum(p.numel() for p in model.parameters())
