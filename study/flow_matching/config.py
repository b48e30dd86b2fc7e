"""TrainingConfig: every knob of a run in one typed dataclass, and its validation.

A run is fully described by its config (plus the data it reads): the checkpoint stores
`config.to_dict()` and a resume rebuilds the same run from it (config_load.py reads YAML,
dicts and checkpoints). Impossible values are `UsageError`s that name the key. This module
imports neither torch nor wandb, so the CLI can validate input cheaply. Every field and the
rule that checks it stay side by side in this one module (~320 lines).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.plugins import check_target, is_target
from study.runs.paths import check_run_name

# Names the trainer can build from a string. Kept here (not imported from the registries)
# so that validating a config never imports torch; tests check the lists stay in sync.
ARCH_NAMES = ("mlp", "resmlp")
FLOW_NAMES = ("icfm", "otcfm", "otcfm-sampled", "fm", "vp", "sbcfm", "reflow")
AUG_NAMES = ("none", "noise")
ACTIVATION_NAMES = ("selu", "relu", "gelu", "silu", "tanh")
SCHEDULER_NAMES = ("cosine", "linear", "step", "constant")
NORMALIZE_NAMES = ("none", "standard")
PRECISION_NAMES = ("fp32", "bf16", "fp16")
SELECT_BY_NAMES = ("val_loss", "eval_w2")
# Fields a stage may override; everything else is fixed for the whole run.
STAGE_OVERRIDES = ("lr", "flow", "sigma", "aug", "aug_std", "teacher")
# sigma when none is given: 0.01 measured best on the 2-D tasks (Tong et al.'s 0.1 blurs the
# samples); sbcfm's entropic OT needs reg = 2 sigma^2 far from 0, as in Tong et al.'s 1.0.
DEFAULT_SIGMA = 0.01
FLOW_SIGMA = {"sbcfm": 1.0}
# Built-in networks: about width x width x depth parameters at most (2e9: 8 GB of float32).
MAX_PARAMETERS = 2_000_000_000


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
class SchedulerConfig:
    """The learning rate after the linear warm-up (schedule.py has the closed forms).

    cosine and linear decay to `final_lr_scale` x lr at the last step; step multiplies the
    LR by `gamma` every `step_size` epochs; constant keeps it.
    """

    type: str = "cosine"
    final_lr_scale: float = 0.0
    gamma: float = 0.1
    step_size: int = 10


@dataclass
class TrainingConfig:
    """What to train and how. Defaults give a meaningful sub-minute run on `moons` (CPU)."""

    # The run's architecture label (part of its name); None: the network's short name, or
    # its class name in lower case for an import path.
    arch: str | None = None
    # mlp | resmlp | pkg.module:Class (docs/networks.md); None: the arch if it names one, else mlp
    network: str | None = None
    network_args: dict[str, Any] = field(default_factory=dict)  # an import path's arguments
    network_sha256: str | None = None  # its source file when training started (set by flowctl)
    flow: str = "icfm"
    dataset: str = "moons"  # a built-in, split name, folder, file, or pkg.module:function
    dataset_args: dict[str, Any] = field(default_factory=dict)  # that function's arguments
    aug: str = "none"
    aug_std: float = 0.01  # std of the Gaussian jitter added to x_1 by `--aug noise`
    source: str = "gaussian"  # x_0 distribution: N(0, I), or a built-in 2-D dataset's name
    teacher: str | None = None  # checkpoint whose ODE provides (x_0, x_1) pairs for `reflow`
    group: str = "default"
    run_name: str | None = None  # None: f"{arch}-{flow}-{dataset}-{aug}"
    epochs: int = 200  # 15,600 steps on moons: ~15-20 s on one CPU thread (docs/results.md)
    batch_size: int = 256
    lr: float = 3e-3  # better than 1e-3 and 1e-2 on moons at this step budget (docs/results.md)
    warmup_steps: int = 100
    patience: int = 0  # epochs without val improvement before stopping; 0: never
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_decay: float = 0.999  # the EMA's decay once warmed up
    ema_warmup: bool = True  # effective decay min(ema_decay, (1 + n) / (10 + n)) at update n
    normalize: str = "standard"  # per-column z-scores (none: data units; far worse in 1024-D)
    # Flow-matching noise in the model's space; None: the flow's own default (FLOW_SIGMA).
    sigma: float | None = None
    log_every: int = 10  # optimizer steps between train/* log rows
    val_fraction: float = 0.1  # used only when a dataset has no ready-made val split
    width: int = 64
    depth: int = 3
    activation: str = "selu"
    save_every: int = 0  # also write last.pt every N optimizer steps; 0: epoch ends only
    checkpoint_interval: float = 30.0  # seconds between epoch-end checkpoints; 0: every epoch
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size is the step's batch)
    precision: str = "fp32"  # autocast dtype of the forward pass: fp32 | bf16 | fp16 (CUDA)
    val_every: int = 1  # epochs between validations (+ the last and each evaluation's epoch)
    eval_every: int = 0  # epochs between W2/MMD evaluations of the EMA weights; 0: never
    eval_samples: int = 1000  # held-out rows (and samples) per evaluation
    select_by: str = "val_loss"  # what best.pt and early stopping follow: val_loss | eval_w2
    keep_snapshots: int = 0  # also keep the last K epoch-numbered checkpoints; 0: none
    eval_fn: str | None = None  # pkg.module:function, its {name: float} logged with W2/MMD
    stages: list[StageConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Python callers may pass mappings (config_load checks their keys for files and flags).
        self.stages = [StageConfig(**s) if isinstance(s, dict) else s for s in self.stages]
        if isinstance(self.scheduler, dict):
            self.scheduler = SchedulerConfig(**self.scheduler)
        if self.sigma is None:
            self.sigma = FLOW_SIGMA.get(self.flow, DEFAULT_SIGMA)
        if self.arch is None:
            self.arch = network_label(self.network)
        if self.run_name is None:  # the study reads config.run_name (get_checkpoint_path)
            self.run_name = self.name

    @property
    def name(self) -> str:
        """The run's name: its folder under the checkpoint root and its wandb name.

        A dataset given as a path contributes its file or folder name without extension
        (`data/moons.csv` -> `mlp-icfm-moons-none`), so the name stays one folder.
        """
        if self.run_name:
            return self.run_name
        dataset = self.dataset
        if is_target(dataset):  # pkg.data:make_blobs -> make_blobs
            dataset = dataset.rsplit(":", 1)[1]
        elif "/" in dataset or "\\" in dataset or Path(dataset).suffix:
            dataset = Path(dataset.replace("\\", "/").rstrip("/")).stem
        return f"{self.arch}-{self.flow}-{dataset}-{self.aug}"

    def _check_network_size(self) -> None:
        """A built-in network's width x width x depth (about its parameter count) within
        MAX_PARAMETERS: a config from a file or a checkpoint (perhaps someone else's) cannot
        make flowctl allocate terabytes or build for hours."""
        if self.network is not None and is_target(self.network):
            return  # the user's own network: its arguments are the user's business
        size = self.width * self.width * self.depth
        if size > MAX_PARAMETERS:
            raise UsageError(f"width {self.width} and depth {self.depth} make a network of about "
                             f"{size:.1e} parameters, more than {MAX_PARAMETERS:.0e}; lower "
                             "--width or --depth")

    def to_dict(self) -> dict[str, Any]:
        """Primitives only (str, int, float, bool, None, lists, dicts): safe for weights_only."""
        return _primitives(self)

    def validate(self, *, check_arch: bool = True) -> TrainingConfig:
        """Raise UsageError on the first impossible value; return self for chaining.

        Any arch label is accepted (a label that names no built-in network trains the
        default one; see assign_network); `network` must name a built-in one or be an import
        path `pkg.module:Class` unless `check_arch=False` (callers that pass their own model).
        Nothing is imported here.
        """
        if check_arch and self.network is not None and not is_target(self.network):
            _check_choice("network", self.network, ARCH_NAMES + ("pkg.module:Class",))
        self._check_plugins()
        if not self.arch.strip() or self.arch in (".", "..") or any(c in self.arch for c in "/\\"):
            raise UsageError(f"--arch {self.arch!r} must be a label usable in a folder name "
                             "(no '/', '\\', '.' or '..')")
        _check_choice("activation", self.activation, ACTIVATION_NAMES)
        for stage in [self, *self.stages]:
            if stage.flow is not None:
                _check_choice("flow", stage.flow, FLOW_NAMES)
            if stage.aug is not None:
                _check_choice("aug", stage.aug, AUG_NAMES)
        check_run_name(self.name, what="--run-name" if self.run_name else "the run name")
        _check_choice("scheduler", self.scheduler.type, SCHEDULER_NAMES)
        _check_choice("normalize", self.normalize, NORMALIZE_NAMES)
        _check_choice("precision", self.precision, PRECISION_NAMES)
        _check_choice("select_by", self.select_by, SELECT_BY_NAMES)
        positive = ("epochs", "batch_size", "log_every", "width", "depth", "grad_accum",
                    "eval_samples", "val_every")
        for key in positive:
            if getattr(self, key) <= 0:
                raise UsageError(f"{key} must be a positive integer, got {getattr(self, key)}")
        non_negative = ("warmup_steps", "patience", "weight_decay", "grad_clip", "sigma",
                        "aug_std", "save_every", "eval_every", "keep_snapshots",
                        "checkpoint_interval")
        for key in non_negative:
            if getattr(self, key) < 0:
                raise UsageError(f"{key} must be >= 0, got {getattr(self, key)}")
        self._check_network_size()
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        self._check_schedule_and_batches()
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

    def _check_schedule_and_batches(self) -> None:
        sched = self.scheduler
        if not 0 <= sched.final_lr_scale <= 1:
            raise UsageError(f"scheduler.final_lr_scale must be in [0, 1], got {sched.final_lr_scale}")
        if not 0 < sched.gamma <= 1 or sched.step_size <= 0:
            raise UsageError(f"scheduler: gamma must be in (0, 1] and step_size positive, got "
                             f"{sched.gamma} and {sched.step_size}")
        if self.batch_size % self.grad_accum:
            raise UsageError(f"batch_size {self.batch_size} is not a multiple of grad_accum "
                             f"{self.grad_accum}: each optimizer step splits its batch into "
                             "equal micro-batches")
        if self.select_by == "eval_w2" and not self.eval_every:
            raise UsageError("--select-by eval_w2 needs evaluations: pass --eval-every K (epochs)")

    def _check_plugins(self) -> None:
        if not isinstance(self.network_args, dict) or not _plain_data(self.network_args):
            raise UsageError(f"network_args must be a mapping of names to numbers, strings, "
                             f"booleans, lists or mappings, got {self.network_args!r}")
        if self.network in ARCH_NAMES and self.network_args:
            raise UsageError(f"network {self.network} takes --width, --depth and --activation, "
                             "not network_args; drop network_args")
        if self.eval_fn is not None:
            check_target(self.eval_fn, what="eval_fn")
        if not isinstance(self.dataset_args, dict) or not _plain_data(self.dataset_args):
            raise UsageError(f"dataset_args must be a mapping of plain values, got {self.dataset_args!r}")
        if self.dataset_args and not is_target(self.dataset):
            raise UsageError("dataset_args is for a dataset given as pkg.module:function; drop it")

    def flows_used(self) -> list[str]:
        return [self.flow] + [s.flow for s in self.stages if s.flow]


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {key} {value!r}; choose one of: {', '.join(choices)}")


def network_label(network: str | None) -> str:
    """The default arch label of a network: its short name, or an import path's class name
    in lower case (`pkg.nets:UNet1d` -> `unet1d`)."""
    if network is None:
        return "mlp"
    return network.rsplit(":", 1)[-1].lower() if is_target(network) else network


def _plain_data(value: Any) -> bool:
    """JSON-like: what a checkpoint can hold under weights_only and a YAML file can say."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_data(item) for item in value)
    return value is None or isinstance(value, (str, int, float, bool))


def assign_network(config: TrainingConfig, warn=print) -> None:
    """Fix which built-in network a run trains: `network`, else the arch when it names one,
    else the default mlp under the arch label (with one notice line)."""
    if config.network is not None:
        return
    if config.arch not in ARCH_NAMES:
        warn(f"arch {config.arch!r} names no built-in network; training the default mlp under "
             f"that label (choose one with --network {'|'.join(ARCH_NAMES)})")
    config.network = resolved_network(None, config.arch)


def resolved_network(network: str | None, arch: str | None) -> str:
    """The network a config trains: `network`, else the arch when it names a built-in, else
    the mlp (configs written before `network` existed, and arch-only labels)."""
    if network is not None:
        return network
    return arch if arch in ARCH_NAMES else "mlp"


def _primitives(value: Any) -> Any:
    """dataclasses.asdict without its deep copy of every leaf (10x faster: a 10,000-point grid
    builds and hashes 10,000 configs); containers are new, leaves are immutable primitives."""
    if isinstance(value, (str, int, float, type(None))):  # bool is an int
        return value
    if dataclasses.is_dataclass(value):
        return {name: _primitives(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, dict):
        return {key: _primitives(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_primitives(item) for item in value)
    return value


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    if cls not in _FIELD_NAMES:
        _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return _FIELD_NAMES[cls]
