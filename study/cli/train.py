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
    Plain,
    RequeueSignal,
    TensorBoard,
    WandbMode,
    WandbProject,
    user_errors,
    warn,
)

# Flags that map one-to-one onto TrainingConfig fields (None: not given on the command line).
CONFIG_FLAGS = ("arch", "network", "flow", "dataset", "aug", "aug_std", "source", "teacher", "group",
                "run_name", "epochs", "batch_size", "lr", "warmup_steps", "patience", "seed",
                "weight_decay", "grad_clip", "ema_decay", "sigma", "log_every", "val_fraction",
                "width", "depth", "activation", "save_every")


def train(
    config: Path | None = typer.Option(None, "--config", help="YAML file of TrainingConfig keys; flags override it."),
    arch: str | None = typer.Option(None, help="Architecture label, part of the run name; mlp | resmlp also pick that network.  [default: mlp]"),
    network: str | None = typer.Option(None, help="Built-in velocity network: mlp | resmlp.  [default: the arch if it names one, else mlp]"),
    flow: str | None = typer.Option(None, help="Flow matcher: icfm | otcfm | fm | vp | sbcfm | reflow.  [default: icfm]"),
    dataset: str | None = typer.Option(None, help="Built-in (moons, 8gaussians, checkerboard, scurve), split name (1k), folder or file.  [default: moons]"),
    aug: str | None = typer.Option(None, help="Augmentation of x_1: none | noise.  [default: none]"),
    aug_std: float | None = typer.Option(None, help="Std of --aug noise.  [default: 0.01]"),
    source: str | None = typer.Option(None, help="x_0 distribution: gaussian or a 2-D built-in.  [default: gaussian]"),
    teacher: str | None = typer.Option(None, help="Teacher checkpoint for --flow reflow."),
    group: str | None = typer.Option(None, help="wandb group.  [default: default]"),
    run_name: str | None = typer.Option(None, help="Run folder/wandb name.  [default: {arch}-{flow}-{dataset}-{aug}]"),
    epochs: int | None = typer.Option(None, help="Total epochs (the target, also on resume).  [default: 20]"),
    batch_size: int | None = typer.Option(None, help="[default: 256]"),
    lr: float | None = typer.Option(None, help="Peak AdamW learning rate.  [default: 1e-3]"),
    warmup_steps: int | None = typer.Option(None, help="Linear warmup steps.  [default: 100]"),
    patience: int | None = typer.Option(None, help="Epochs without val improvement before stopping (0: never).  [default: 5]"),
    seed: int | None = typer.Option(None, help="[default: 0]"),
    weight_decay: float | None = typer.Option(None, help="[default: 0]"),
    grad_clip: float | None = typer.Option(None, help="Max grad norm (0: off).  [default: 1.0]"),
    ema_decay: float | None = typer.Option(None, help="[default: 0.999]"),
    sigma: float | None = typer.Option(None, help="Flow noise level.  [default: 0.1]"),
    log_every: int | None = typer.Option(None, help="Optimizer steps per log row.  [default: 10]"),
    val_fraction: float | None = typer.Option(None, help="Val share when a dataset has no val split.  [default: 0.1]"),
    width: int | None = typer.Option(None, help="Hidden width.  [default: 64]"),
    depth: int | None = typer.Option(None, help="Hidden layers / residual blocks.  [default: 3]"),
    activation: str | None = typer.Option(None, help="selu | relu | gelu | silu | tanh.  [default: selu]"),
    save_every: int | None = typer.Option(None, help="Also write last.pt every N steps (0: epoch ends only).  [default: 0]"),
    resume: str | None = typer.Option(None, "--resume", help="Continue from a checkpoint file, run folder or run name; `auto`: continue the run these flags name if it has a checkpoint, else start it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over when the run already has checkpoints."),
    ckpt_dir: CkptDir = None,
    wandb_project: WandbProject = "flow-matching-study",
    wandb_mode: WandbMode = None,
    device: Device = "auto",
    requeue_signal: RequeueSignal = None,
    plain: Plain = False,
    tensorboard: TensorBoard = False,
) -> None:
    """Train a flow-matching model; keeps best.pt and last.pt under the run folder.

    Example: flowctl train --flow otcfm --dataset 8gaussians --epochs 10
    """
    values = dict(locals())
    overrides = {key: values[key] for key in CONFIG_FLAGS}
    with user_errors():
        run_from_cli(overrides, config_path=config, resume=resume, overwrite=overwrite,
                     ckpt_dir=ckpt_dir, wandb_project=wandb_project, wandb_mode=wandb_mode,
                     device=device, requeue_signal=requeue_signal, plain=plain,
                     tensorboard=tensorboard)


def run_from_cli(overrides: dict[str, Any], *, config_path: Path | None, resume: str | None,
                 overwrite: bool, ckpt_dir: str | None, wandb_project: str,
                 wandb_mode: str | None, device: str, requeue_signal: str | None,
                 plain: bool, tensorboard: bool = False) -> None:
    """Shared by train and resume: validate, plan, run, print the summary, map the exit code."""
    from study.flow_matching import launch
    from study.flow_matching.config import load_config
    from study.flow_matching.progress import ConsoleProgress
    from study.runs.tracking import WANDB_MODES

    if wandb_mode is not None and wandb_mode not in WANDB_MODES:
        from study.errors import UsageError

        raise UsageError(f"unknown --wandb-mode {wandb_mode!r}; choose one of: {', '.join(WANDB_MODES)}")
    setup_logging()
    options = launch.RunOptions(ckpt_dir=ckpt_dir, device=device, wandb_project=wandb_project,
                                wandb_mode=wandb_mode, overwrite=overwrite,
                                requeue_signal=requeue_signal, tensorboard=tensorboard,
                                progress=ConsoleProgress(force_plain=plain))
    point = None
    if resume == "auto":
        training_config, point = launch.plan_auto_resume(load_config(config_path, overrides),
                                                         options, warn=warn)
    elif resume is not None:
        if config_path is not None:
            warn("--config is ignored with --resume: the checkpoint's config wins")
        training_config, point = launch.plan_resume(resume, overrides, options, warn=warn)
    else:
        training_config = load_config(config_path, overrides)
    try:
        result = execute(training_config, options, point)
    except launch.AlreadyCompleted as done:
        typer.echo(str(done))
        return
    print_summary(result)


def execute(config, options, resume) -> dict[str, Any]:
    """Run training; a graceful stop exits 143/130, a failure exits 1 with one line."""
    from study.errors import FlowctlError, RunFailed
    from study.flow_matching.launch import AlreadyCompleted, run_training
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
        print(self.format(record), file=sys.stderr)


def setup_logging() -> None:
    logger = logging.getLogger("flowctl")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("flowctl: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
