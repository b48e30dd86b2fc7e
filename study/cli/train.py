"""flowctl train: train one flow-matching run (or continue one with --resume)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import typer

from study.cli.common import (
    CkptDir,
    Device,
    MaxRestarts,
    Nproc,
    PairingWorkers,
    Plain,
    RequeueSignal,
    StrictWorldSize,
    TensorBoard,
    Threads,
    Tracker,
    WandbMode,
    WandbProject,
    user_errors,
    warn,
)
from study.cli.torchrun import exit_code_recorded, worker_args
from study.runs.display import printable

# Flags that map one-to-one onto TrainingConfig fields (None: not given on the command line).
CONFIG_FLAGS = ("arch", "network", "eval_fn", "flow", "dataset", "aug", "aug_std", "source", "teacher", "group",
                "run_name", "epochs", "batch_size", "lr", "warmup_steps", "patience", "seed",
                "weight_decay", "grad_clip", "ema_decay", "sigma", "log_every", "val_fraction",
                "width", "depth", "activation", "save_every", "ema_warmup", "normalize",
                "grad_accum", "precision", "eval_every", "eval_samples", "select_by",
                "keep_snapshots", "checkpoint_interval")
# Flags that set one key of a mapping in the config: flag -> (config key, nested key).
NESTED_FLAGS = {"scheduler": ("scheduler", "type"), "final_lr_scale": ("scheduler", "final_lr_scale"),
                "lr_gamma": ("scheduler", "gamma"), "lr_step_size": ("scheduler", "step_size")}


def train(
    ctx: typer.Context,
    assignments: list[str] | None = typer.Argument(None, metavar="[KEY=VALUE]...", show_default=False, help="Config keys as Hydra users type them, after the flags' names: epochs=3 scheduler.type=linear network.args.hidden=256 (a key may not also be given as a flag)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of TrainingConfig keys; flags override it."),
    arch: str | None = typer.Option(None, help="Architecture label, part of the run name; mlp | resmlp also pick that network.  [default: the network's name]"),
    network: str | None = typer.Option(None, help="Velocity network: mlp | resmlp | pkg.module:Class (docs/networks.md).  [default: the arch if it names one, else mlp]"),
    network_args: str | None = typer.Option(None, help='JSON keyword arguments of a pkg.module:Class network, e.g. \'{"hidden": 512}\'.'),
    eval_fn: str | None = typer.Option(None, help="pkg.module:function scoring the EMA model's samples at each --eval-every (and in `flowctl eval`); its {name: float} is logged as eval/NAME."),
    flow: str | None = typer.Option(None, help="Flow matcher: icfm | otcfm | otcfm-sampled | fm | vp | sbcfm | reflow.  [default: icfm]"),
    dataset: str | None = typer.Option(None, help="Built-in (moons, 8gaussians, checkerboard, scurve), split name (1k), folder, file, or pkg.module:function.  [default: moons]"),
    dataset_args: str | None = typer.Option(None, help='JSON keyword arguments of a pkg.module:function dataset, e.g. \'{"n": 5000}\'.'),
    aug: str | None = typer.Option(None, help="Augmentation of x_1: none | noise.  [default: none]"),
    aug_std: float | None = typer.Option(None, help="Std of --aug noise.  [default: 0.01]"),
    source: str | None = typer.Option(None, help="x_0 distribution: gaussian or a 2-D built-in.  [default: gaussian]"),
    teacher: str | None = typer.Option(None, help="Teacher checkpoint for --flow reflow."),
    group: str | None = typer.Option(None, help="wandb group.  [default: default]"),
    run_name: str | None = typer.Option(None, help="Run folder/wandb name.  [default: {arch}-{flow}-{dataset}-{aug}]"),
    epochs: int | None = typer.Option(None, help="Total epochs (the target, also on resume).  [default: 200]"),
    batch_size: int | None = typer.Option(None, help="[default: 256]"),
    lr: float | None = typer.Option(None, help="Peak AdamW learning rate.  [default: 3e-3]"),
    warmup_steps: int | None = typer.Option(None, help="Linear warmup steps.  [default: 100]"),
    patience: int | None = typer.Option(None, help="Epochs without val improvement before stopping (0: never).  [default: 0]"),
    seed: int | None = typer.Option(None, help="[default: 0]"),
    weight_decay: float | None = typer.Option(None, help="[default: 0]"),
    grad_clip: float | None = typer.Option(None, help="Max grad norm (0: off).  [default: 1.0]"),
    ema_decay: float | None = typer.Option(None, help="[default: 0.999]"),
    sigma: float | None = typer.Option(None, help="Flow noise level (in the model's space: see --normalize).  [default: 0.01; sbcfm: 1.0]"),
    log_every: int | None = typer.Option(None, help="Optimizer steps per log row.  [default: 10]"),
    val_fraction: float | None = typer.Option(None, help="Val share when a dataset has no val split.  [default: 0.1]"),
    width: int | None = typer.Option(None, help="Hidden width.  [default: 64]"),
    depth: int | None = typer.Option(None, help="Hidden layers / residual blocks.  [default: 3]"),
    activation: str | None = typer.Option(None, help="selu | relu | gelu | silu | tanh.  [default: selu]"),
    save_every: int | None = typer.Option(None, help="Also write last.pt every N steps (0: epoch ends only).  [default: 0]"),
    checkpoint_interval: float | None = typer.Option(None, help="Seconds between epoch-end checkpoints (0: every epoch); a pending best.pt is written with them.  [default: 30]"),
    keep_snapshots: int | None = typer.Option(None, help="Also keep the last K epoch-numbered checkpoints (epoch-0007.pt).  [default: 0]"),
    scheduler: str | None = typer.Option(None, help="LR after warm-up: cosine | linear | step | constant.  [default: cosine]"),
    final_lr_scale: float | None = typer.Option(None, help="cosine/linear: final LR as a fraction of --lr.  [default: 0]"),
    lr_gamma: float | None = typer.Option(None, help="step: multiply the LR by this ...  [default: 0.1]"),
    lr_step_size: int | None = typer.Option(None, help="step: ... every this many epochs.  [default: 10]"),
    grad_accum: int | None = typer.Option(None, help="Micro-batches per optimizer step; --batch-size stays the step's batch.  [default: 1]"),
    precision: str | None = typer.Option(None, help="Forward pass in fp32 | bf16 | fp16 (CUDA) via autocast.  [default: fp32]"),
    normalize: str | None = typer.Option(None, help="none: the model sees data units; standard: per-column z-scores.  [default: standard]"),
    ema_warmup: bool | None = typer.Option(None, "--ema-warmup/--no-ema-warmup", help="Ramp the EMA decay up with the step.  [default: on]"),
    eval_every: int | None = typer.Option(None, help="Epochs between W2/MMD evaluations of the EMA weights (0: never).  [default: 0]"),
    eval_samples: int | None = typer.Option(None, help="Held-out rows compared per evaluation.  [default: 1000]"),
    select_by: str | None = typer.Option(None, help="What best.pt and early stopping follow: val_loss | eval_w2.  [default: val_loss]"),
    resume: str | None = typer.Option(None, "--resume", help="Continue from a checkpoint file, run folder or run name; `auto`: continue the run these flags name if it has a checkpoint, else start it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over when the run already has checkpoints."),
    ckpt_dir: CkptDir = None,
    wandb_project: WandbProject = "flow-matching-study",
    wandb_mode: WandbMode = None,
    device: Device = "auto",
    threads: Threads = None,
    requeue_signal: RequeueSignal = None,
    plain: Plain = False,
    tensorboard: TensorBoard = False,
    pairing_workers: PairingWorkers = None,
    nproc: Nproc = None,
    max_restarts: MaxRestarts = 0,
    strict_world_size: StrictWorldSize = False,
    tracker: Tracker = None,
) -> None:
    """Train a flow-matching model; keeps best.pt and last.pt under the run folder.

    Example: flowctl train --flow otcfm --dataset 8gaussians --epochs 10
    Example: flowctl train epochs=3 scheduler.type=linear
    """
    values = dict(locals())
    overrides = {key: values[key] for key in CONFIG_FLAGS}
    overrides["network_args"] = network_args  # parsed from JSON in run_command
    overrides["dataset_args"] = dataset_args
    for flag, (key, nested) in NESTED_FLAGS.items():
        if values[flag] is not None:
            overrides.setdefault(key, None)
            overrides[key] = {**(overrides[key] or {}), nested: values[flag]}
    with user_errors():
        overrides = with_assignments(overrides, assignments or [])
    run_command(ctx, values, overrides, config_path=config, resume=resume, overwrite=overwrite,
                worker_suffix=tuple(assignments or ()))


def with_assignments(overrides: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """The flags' overrides plus `key=value` words; a key given both ways is one error line."""
    from study.errors import UsageError
    from study.flow_matching.config_load import assignments_to_overrides

    words = assignments_to_overrides(assignments)
    for key, value in words.items():
        top = key.split(".")[0]
        flag = f"{top}_args" if key.startswith(f"{top}.args.") else top  # network.args.X: --network-args
        given = overrides.get(flag)
        nested_clash = isinstance(value, dict) and isinstance(given, dict) and set(value) & set(given)
        if given is not None and (not isinstance(value, dict) or nested_clash):
            raise UsageError(f"{flag} is given twice (a flag and {key}=...); keep one")
        overrides = {**overrides, key: {**(given or {}), **value} if isinstance(value, dict) and
                     isinstance(given, dict) else value}
    return overrides


# The run options `train` and `resume` share (RunOptions fields, and --plain, --tracker).
RUN_OPTION_FLAGS = ("ckpt_dir", "device", "wandb_project", "wandb_mode", "requeue_signal",
                    "tensorboard", "strict_world_size", "plain", "pairing_workers", "tracker",
                    "threads")


def run_command(ctx, values: dict[str, Any], overrides: dict[str, Any], *,
                config_path: Path | None, resume: str | None, overwrite: bool,
                worker_prefix: tuple[str, ...] = (), worker_suffix: tuple[str, ...] = ()) -> None:
    """What `train` and `resume` do with their flags: run here, or under torchrun (--nproc)."""
    with exit_code_recorded(), user_errors():
        for key in ("network_args", "dataset_args"):
            if isinstance(overrides.get(key), str):
                overrides = {**overrides, key: parse_json_mapping(
                    overrides[key], flag=f"--{key.replace('_', '-')}")}
        options = run_options(overwrite=overwrite, **{key: values[key] for key in RUN_OPTION_FLAGS})
        launcher = ((values["nproc"], values["max_restarts"], [*worker_prefix, *worker_args(ctx), *worker_suffix])
                    if values["nproc"] else None)
        run_from_cli(overrides, config_path=config_path, resume=resume, options=options,
                     launcher=launcher)


def parse_json_mapping(text: str, *, flag: str) -> dict[str, Any]:
    """A flag's JSON object -> dict; UsageError (one line) for anything else."""
    import json

    from study.errors import UsageError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{flag} is not valid JSON ({err.msg} at column {err.colno}); write "
                         f"it as {flag} '{{\"hidden\": 512}}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object like '{{\"hidden\": 512}}', got {text!r}")
    return value


def run_options(*, plain: bool, wandb_mode: str | None, tracker: list[str] | None = None,
                **fields: Any):
    """RunOptions from the flags every training command shares (checked here)."""
    from study.flow_matching.launch import RunOptions
    from study.flow_matching.progress import ConsoleProgress
    from study.runs.tracking import WANDB_MODES, check_available, parse_tracker_option

    if wandb_mode is not None and wandb_mode not in WANDB_MODES:
        from study.errors import UsageError

        raise UsageError(f"unknown --wandb-mode {wandb_mode!r}; choose one of: {', '.join(WANDB_MODES)}")
    tensorboard = bool(fields.get("tensorboard"))
    trackers = parse_tracker_option(tracker, tensorboard=tensorboard)
    check_available((*(trackers or ()), *(("tensorboard",) if tensorboard else ())))
    return RunOptions(wandb_mode=wandb_mode, progress=ConsoleProgress(force_plain=plain),
                      trackers=trackers, **fields)


def run_from_cli(overrides: dict[str, Any], *, config_path: Path | None, resume: str | None,
                 options, launcher: tuple[int, int, list[str]] | None = None) -> None:
    """Shared by train and resume: validate, plan, run (here, or on `launcher` = (nproc,
    max restarts, worker args) processes under torchrun), print the summary."""
    from study.flow_matching import resume as resume_plans
    from study.flow_matching.config_load import load_config
    from study.runtime.ranks import restarted_by_torchrun

    setup_logging()
    if restarted_by_torchrun():  # a rank died and torchrun restarted us: continue the run
        resume, options.overwrite = resume or "auto", False
    point = None
    if resume == "auto":
        training_config, point = resume_plans.plan_auto_resume(
            load_config(config_path, overrides), options.ckpt_dir, warn=warn)
    elif resume is not None:
        if config_path is not None:
            warn("--config is ignored with --resume: the checkpoint's config wins")
        training_config, point = resume_plans.plan_resume(resume, overrides, options.ckpt_dir,
                                                          warn=warn)
    else:
        training_config = load_config(config_path, overrides)
    if launcher is not None:
        raise typer.Exit(launch_processes(training_config, options, point, *launcher))
    try:
        result = execute(training_config, options, point)
    except resume_plans.AlreadyCompleted as done:
        typer.echo(str(done))
        return
    print_summary(result)


def launch_processes(config, options, point, nproc: int, max_restarts: int,
                     args: list[str]) -> int:
    """Check what can be checked here, then train on `nproc` processes under torchrun."""
    from study.cli.torchrun import run_under_torchrun
    from study.errors import UsageError
    from study.flow_matching.resume import check_world_size

    if nproc < 1 or max_restarts < 0:
        raise UsageError(f"--nproc must be >= 1 and --max-restarts >= 0, got {nproc} and {max_restarts}")
    if config.batch_size % (nproc * config.grad_accum):
        raise UsageError(f"--batch-size {config.batch_size} (the global batch) must split into "
                         f"{nproc} process(es) x {config.grad_accum} micro-batch(es)")
    if point is not None:
        check_world_size(point, nproc, strict=options.strict_world_size, warn=lambda m: None)
    return run_under_torchrun(args, nproc=nproc, max_restarts=max_restarts)


def execute(config, options, resume) -> dict[str, Any]:
    """Run training; a graceful stop exits 143/130, a failure exits 1 with one line."""
    from study.errors import FlowctlError, RunFailed
    from study.flow_matching.launch import run_training
    from study.flow_matching.resume import AlreadyCompleted
    from study.signals import TrainingStopped

    try:
        return run_training(config, options, resume=resume, warn=warn)
    except TrainingStopped as stopped:
        typer.echo(f"{config.name}: {stopped}", err=True)
        from study.slurm.requeue import exit_code_after_stop  # under Slurm: requeue the job
        raise typer.Exit(exit_code_after_stop(stopped, config.name, options)) from None
    except (FlowctlError, AlreadyCompleted):
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as error:
        from study.cli.common import debug_enabled

        if debug_enabled():
            raise
        raise RunFailed(f"run {config.name} failed: {type(error).__name__}: {error}") from error


def print_summary(result: dict[str, Any]) -> None:
    """Plain aligned lines (never truncated, easy to grep in a job log)."""
    lines = [f"run {Path(result['run_dir']).name}: {result['status']}",
             f"  epochs run       {result['epochs_run']}",
             f"  global step      {result['global_step']}",
             f"  best val loss    {result['best_val_loss']:.6g}",
             f"  best checkpoint  {result['checkpoint_path']}",
             f"  wall time        {result['elapsed_s']:.1f}s"]
    typer.echo("\n".join(lines))


class _CurrentStderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time (a test runner may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        # Notes quote checkpoint and config values (stage names, paths): shown, never obeyed.
        print(printable(self.format(record)), file=sys.stderr)


def setup_logging() -> None:
    logger = logging.getLogger("flowctl")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("flowctl: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
