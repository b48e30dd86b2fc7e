"""A run's velocity network: an import path plus arguments, built and rebuilt in one place.

`build_network(config, dim)` is the only function that turns a config (a TrainingConfig,
or the plain dict stored in a checkpoint) into a model: `flowctl train` and every resume
build the model with it, and `load_flow_model` (sample, eval, plot, reflow's teacher, the
Python API) rebuilds a checkpoint's model with it. The contract a network meets is in
docs/networks.md:

    Class(dim, **network_args)   # dim: the data's number of features D
    forward(x [B, D], t [B]) -> velocity [B, D]   # t may also come as a 0-dim tensor

`mlp` and `resmlp` are short names for this package's own classes, which take their
arguments from the config's `width`, `depth` and `activation` keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from study.errors import UsageError
from study.flow_matching.config import ARCH_NAMES, TrainingConfig, resolved_network
from study.plugins import SCRIPT_MODULE, resolve_target, source_sha256


@dataclass
class NetworkSpec:
    """What a config says to build: the import path, its keyword arguments, and the sha256
    of its source file when the run started (None: not recorded, or a built-in)."""

    name: str  # as the config says it: mlp, resmlp, or pkg.module:Class
    target: str  # always an import path
    args: dict[str, Any]
    sha256: str | None


def network_spec(config: TrainingConfig | Mapping[str, Any]) -> NetworkSpec:
    """The network a config describes. A config from before `network` existed trains the
    mlp unless its arch label names a built-in (what `assign_network` decides)."""
    values = config.to_dict() if isinstance(config, TrainingConfig) else dict(config)
    name = resolved_network(values.get("network"), values.get("arch"))
    if name in ARCH_NAMES:
        from study.flow_matching.models import MODELS, check_model_args

        args = {"width": values.get("width", 64), "depth": values.get("depth", 3),
                "activation": values.get("activation", "selu")}
        check_model_args(**args)
        cls = MODELS[name]
        return NetworkSpec(name, f"{cls.__module__}:{cls.__qualname__}", args, None)
    return NetworkSpec(name, name, dict(values.get("network_args") or {}),
                       values.get("network_sha256"))


def build_network(config: TrainingConfig | Mapping[str, Any], dim: int, *, warn=print,
                  run: str | None = None):
    """A fresh network for D=`dim` data as `config` describes it (seed torch first for a
    reproducible initialisation). The target is resolved and checked to be an nn.Module
    subclass before it is called; a source file changed since the run started gives one
    warning line. UsageError (exit 2) when it cannot be imported or refuses its arguments."""
    spec = network_spec(config)
    what = f"run {run}'s network" if run else "network"
    if spec.target.startswith(f"{SCRIPT_MODULE}:"):
        name = spec.target.split(":")[1]
        raise UsageError(f"{what} {spec.target} is a class defined in a script, which no other "
                         f"process can import; move {name} into a module and train with "
                         f"--network pkg.module:{name}, or load the run from Python: "
                         f"study.load_run({run or 'RUN'!r}, model={name}(...))")
    cls = resolve_target(spec.target, kind="network", what=what)
    if spec.sha256 is not None:
        now = source_sha256(cls)
        if now is not None and now != spec.sha256:
            warn(f"{spec.target}: its source file changed since {run or 'the run'} started "
                 "training; the weights may not fit or may behave differently")
    try:
        return cls(dim, **spec.args)
    except TypeError as err:
        raise UsageError(f"{what} {spec.target} refused its arguments {spec.args} (and dim "
                         f"{dim}): {err}; fix network_args") from None


def record_network(config: TrainingConfig) -> None:
    """Set `config.network_sha256` to the network's source file's sha256 when a run starts
    (import paths only; a resume keeps the recorded one)."""
    spec = network_spec(config)
    if spec.name in ARCH_NAMES or config.network_sha256 is not None:
        return
    config.network_sha256 = source_sha256(resolve_target(spec.target, kind="network"))


def record_model_class(model, config: TrainingConfig) -> None:
    """A model object handed to FlowTrainer: when the config names no network, record the
    model's class (a built-in's short name, else `module:Class` when an import finds that
    class again, `__main__:Class` for a script's class) and its source file's sha256, so the
    CLI can rebuild it. Constructor arguments other than dim come from `config.network_args`."""
    if config.network is not None:
        return
    from study.flow_matching.models import MODELS
    from study.plugins import target_of

    cls = type(model)
    built_in = [name for name, known in MODELS.items() if known is cls]
    if built_in:
        config.network = built_in[0]
        return
    target = target_of(cls)
    if target is None:
        return
    config.network = target
    if not target.startswith(f"{SCRIPT_MODULE}:"):
        config.network_sha256 = source_sha256(cls)
