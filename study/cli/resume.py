"""flowctl resume: continue a stopped (or extend a finished) run from its checkpoint."""

from __future__ import annotations

import typer

from study.cli.common import user_errors


def resume(
    target: str = typer.Argument(..., help="Run name, run folder or checkpoint file."),
    epochs: int | None = typer.Option(None, help="Total epochs to reach (not 'more epochs')."),
    patience: int | None = typer.Option(None, help="Override early-stopping patience."),
    log_every: int | None = typer.Option(None, help="Override optimizer steps per log row."),
    save_every: int | None = typer.Option(None, help="Override mid-epoch checkpoint interval."),
    ckpt_dir: str | None = typer.Option(None, "--ckpt-dir", help="Checkpoint root.  [default: $FLOWCTL_CKPT_DIR or study/checkpoints]"),
    wandb_project: str = typer.Option("flow-matching-study", "--wandb-project"),
    wandb_mode: str | None = typer.Option(None, "--wandb-mode", help="offline | online | disabled ($WANDB_MODE wins)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    requeue_signal: str | None = typer.Option(None, "--requeue-signal", help="Also stop gracefully on this signal (e.g. SIGUSR1)."),
    plain: bool = typer.Option(False, "--plain", help="Plain progress lines even on a terminal."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write scalars to {run}/tb/ (needs tensorboard)."),
) -> None:
    """Continue a run exactly where it stopped; the config comes from the checkpoint.

    A run name resolves to {root}/{name}/last.pt (else best.pt). --epochs is the total
    target: on a finished run it extends training (the cosine schedule is re-planned).

    Example: flowctl resume mlp-icfm-moons-none --epochs 40
    """
    from study.cli.train import run_from_cli

    overrides = {"epochs": epochs, "patience": patience, "log_every": log_every,
                 "save_every": save_every}
    with user_errors():
        run_from_cli(overrides, config_path=None, resume=target, overwrite=False,
                     ckpt_dir=ckpt_dir, wandb_project=wandb_project, wandb_mode=wandb_mode,
                     device=device, requeue_signal=requeue_signal, plain=plain,
                     tensorboard=tensorboard)
