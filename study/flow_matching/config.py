"""TrainingConfig: every knob of a run in one typed dataclass.

A run is fully described by its config (plus the data it reads): the checkpoint stores
`config.to_dict()` and a resume rebuilds the same run from it. YAML files go through
`yaml.safe_load`; unknown keys and impossible values are `UsageError`s that name the key.
This module imports neither torch nor wandb, so the CLI can validate input cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study.errors import UsageError

# Names the trainer can build from a string. Kept here (not imported from the registries)
# so that validating a config never imports torch; tests check the lists stay in sync.
ARCH_NAMES = ("mlp", "resmlp")
FLOW_NAMES = ("icfm", "otcfm", "fm", "vp", "sbcfm", "reflow")
AUG_NAMES = ("none", "noise")
ACTIVATION_NAMES = ("selu", "relu", "gelu", "silu", "tanh")
# Fields a stage may override; everything else is fixed for the whole run.
STAGE_OVERRIDES = ("lr", "flow", "sigma", "aug", "aug_std", "teacher")


@dataclass
class StageConfig:
    """One named stage of a multi-stage schedule: `epochs` epochs with some overrides."""

    name: str
    epochs: int
    lr: float | None = None
    flow: str | None = None
    sigma: float | None = None
    aug: str | None = None
    aug_std: float | None = None
    teacher: str | None = None


@dataclass
class TrainingConfig:
    """What to train and how. Defaults give a meaningful sub-minute run on `moons` (CPU)."""

    arch: str = "mlp"  # the run's architecture label (part of its name)
    network: str | None = None  # built-in network; None: the arch if it names one, else mlp
    flow: str = "icfm"
    dataset: str = "moons"
    aug: str = "none"
    aug_std: float = 0.01  # std of the Gaussian jitter added to x_1 by `--aug noise`
    source: str = "gaussian"  # x_0 distribution: N(0, I), or a built-in 2-D dataset's name
    teacher: str | None = None  # checkpoint whose ODE provides (x_0, x_1) pairs for `reflow`
    group: str = "default"
    run_name: str | None = None  # None: f"{arch}-{flow}-{dataset}-{aug}"
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 100
    patience: int = 5  # epochs without val improvement before stopping early
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_decay: float = 0.999  # short runs: 0.9999 would leave the EMA near initialisation
    sigma: float = 0.1  # flow-matching noise level (Tong et al. 2023 use 0.1 on 2-D tasks)
    log_every: int = 10  # optimizer steps between train/* log rows
    val_fraction: float = 0.1  # used only when a dataset has no ready-made val split
    width: int = 64
    depth: int = 3
    activation: str = "selu"
    save_every: int = 0  # also write last.pt every N optimizer steps; 0: epoch ends only
    stages: list[StageConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, StageConfig) else _stage_from_dict(s) for s in self.stages]

    @property
    def name(self) -> str:
        """The run's name: its folder under the checkpoint root and its wandb name.

        A dataset given as a path contributes its file or folder name without extension
        (`data/moons.csv` -> `mlp-icfm-moons-none`), so the name stays one folder.
        """
        if self.run_name:
            return self.run_name
        dataset = self.dataset
        if "/" in dataset or "\\" in dataset or Path(dataset).suffix:
            dataset = Path(dataset.replace("\\", "/").rstrip("/")).stem
        return f"{self.arch}-{self.flow}-{dataset}-{self.aug}"

    def to_dict(self) -> dict[str, Any]:
        """Primitives only (str, int, float, bool, None, lists, dicts): safe for weights_only."""
        return dataclasses.asdict(self)

    def validate(self, *, check_arch: bool = True) -> TrainingConfig:
        """Raise UsageError on the first impossible value; return self for chaining.

        Any arch label is accepted (a label that names no built-in network trains the
        default one; see launch.assign_network); `network` must name a built-in one unless
        `check_arch=False` (callers that pass their own model).
        """
        if check_arch and self.network is not None:
            _check_choice("network", self.network, ARCH_NAMES)
        if not self.arch.strip() or self.arch in (".", "..") or any(c in self.arch for c in "/\\"):
            raise UsageError(f"--arch {self.arch!r} must be a label usable in a folder name "
                             "(no '/', '\\', '.' or '..')")
        _check_choice("activation", self.activation, ACTIVATION_NAMES)
        for stage in [self, *self.stages]:
            if stage.flow is not None:
                _check_choice("flow", stage.flow, FLOW_NAMES)
            if stage.aug is not None:
                _check_choice("aug", stage.aug, AUG_NAMES)
        if self.run_name is not None and (not self.run_name.strip() or self.run_name in (".", "..")
                                          or any(c in self.run_name for c in "/\\")):
            raise UsageError(f"--run-name {self.run_name!r} must be a single folder name "
                             "(no '/', '\\', '.' or '..')")
        positive = ("epochs", "batch_size", "log_every", "width", "depth")
        for key in positive:
            if getattr(self, key) <= 0:
                raise UsageError(f"{key} must be a positive integer, got {getattr(self, key)}")
        non_negative = ("warmup_steps", "patience", "weight_decay", "grad_clip", "sigma",
                        "aug_std", "save_every")
        for key in non_negative:
            if getattr(self, key) < 0:
                raise UsageError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for stage in self.stages:
            if stage.epochs <= 0:
                raise UsageError(f"stage {stage.name!r}: epochs must be positive, got {stage.epochs}")
            if stage.lr is not None and not stage.lr > 0:
                raise UsageError(f"stage {stage.name!r}: lr must be > 0, got {stage.lr}")
        # reflow trains on pairs made once, before training, by a teacher checkpoint; a
        # schedule that switches to reflow mid-run would need the pairs mid-run (not yet).
        flows = {stage.flow or self.flow for stage in self.stages} if self.stages else {self.flow}
        if "reflow" in flows:
            if len(flows) > 1:
                raise UsageError("reflow cannot share a stage schedule with other flows yet; train "
                                 "the teacher as its own run and pass --teacher RUN|PATH")
            if not (self.teacher or any(stage.teacher for stage in self.stages)):
                raise UsageError("flow 'reflow' needs a teacher: pass --teacher RUN|PATH (a checkpoint)")
        return self

    def flows_used(self) -> list[str]:
        return [self.flow] + [s.flow for s in self.stages if s.flow]


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {key} {value!r}; choose one of: {', '.join(choices)}")


def _stage_from_dict(raw: Any) -> StageConfig:
    if not isinstance(raw, dict):
        raise UsageError(f"each entry of 'stages' must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(StageConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"unknown stage key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
    if "name" not in raw or "epochs" not in raw:
        raise UsageError("each stage needs 'name' and 'epochs', e.g. {name: warm, epochs: 5}")
    return StageConfig(**{k: _coerce(StageConfig, k, v) for k, v in raw.items()})


_FIELD_TYPES = {
    cls: {f.name: f.type for f in dataclasses.fields(cls)} for cls in (TrainingConfig, StageConfig)
}


def _coerce(cls: type, key: str, value: Any) -> Any:
    """Check a YAML/CLI value against the field's declared type (ints widen to floats)."""
    declared = str(_FIELD_TYPES[cls][key])
    if value is None:
        if "None" in declared:
            return None
        raise UsageError(f"{key} must not be empty")
    if key == "stages":
        if not isinstance(value, list):
            raise UsageError(f"stages must be a list of mappings, got {type(value).__name__}")
        return value
    base = declared.split("|")[0].strip()
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "str" and isinstance(value, str):
        return value
    raise UsageError(f"{key} must be a {base}, got {value!r} ({type(value).__name__})")


def config_from_dict(raw: dict[str, Any], *, source: str = "config") -> TrainingConfig:
    """Build a TrainingConfig from a plain dict; unknown keys are errors naming the key."""
    if not isinstance(raw, dict):
        raise UsageError(f"{source} must be a mapping of key: value, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(
            f"unknown key {unknown[0]!r} in {source}; valid keys: {', '.join(sorted(known))}"
        )
    return TrainingConfig(**{k: _coerce(TrainingConfig, k, v) for k, v in raw.items()})


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None,
                *, check_arch: bool = True) -> TrainingConfig:
    """Read a YAML file (if given), apply `overrides` (None values are ignored), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise UsageError(f"cannot read config {path}: {err.strerror or err}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise UsageError(f"config {path} is not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UsageError(f"config {path} must be a mapping of key: value, got {type(loaded).__name__}")
        raw.update(loaded)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(raw, source=str(path) if path else "config").validate(check_arch=check_arch)
