"""flowctl resume: continue a stopped (or extend a finished) run from its checkpoint."""

from __future__ import annotations

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
)


def resume(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="Run name, run folder or checkpoint file."),
    epochs: int | None = typer.Option(None, help="Total epochs to reach (not 'more epochs')."),
    patience: int | None = typer.Option(None, help="Override early-stopping patience."),
    log_every: int | None = typer.Option(None, help="Override optimizer steps per log row."),
    save_every: int | None = typer.Option(None, help="Override mid-epoch checkpoint interval."),
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
    """Continue a run exactly where it stopped; the config comes from the checkpoint.

    A run name resolves to {root}/{name}/last.pt (else best.pt). --epochs is the total
    target: on a finished run it extends training (the cosine schedule is re-planned).

    Example: flowctl resume mlp-icfm-moons-none --epochs 40
    """
    from study.cli.train import run_command

    values = dict(locals())
    overrides = {"epochs": epochs, "patience": patience, "log_every": log_every,
                 "save_every": save_every}
    run_command(ctx, values, overrides, config_path=None, resume=target, overwrite=False,
                worker_prefix=("--resume", target))
