"""`flowctl plot`: PNG figures of a run in its folder (loss curves, samples or marginals).

torch and matplotlib are imported inside the command: `flowctl --help` must not pay for them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from study.cli.common import CkptDir, Device, Last, resolve_checkpoint, user_errors

TRAJECTORIES = 32  # paths drawn on samples.png; more hide the samples


def plot(
    target: str = typer.Argument(..., help="A run name or run folder (or a checkpoint file in one)."),
    log_scale: bool = typer.Option(False, "--log-scale", help="Logarithmic loss axis."),
    n: int = typer.Option(1000, "--n", help="Samples drawn for samples.png / marginals.png."),
    data: Path | None = typer.Option(None, "--data", help="Data to draw behind the samples.  [default: the run's test split, else val]"),
    ckpt_dir: CkptDir = None,
    last: Last = False,
    device: Device = "auto",
) -> None:
    """Write loss.png (train/val loss from metrics.csv) and samples.png (2-D: samples from best.pt, held-out data, a few trajectories) or marginals.png (higher dimensions: per-dimension histograms) into the run folder.

    Prints the path of each file it wrote.

    Example: flowctl plot mlp-icfm-moons-none --log-scale
    """
    with user_errors():
        for path in run_plots(target, log_scale=log_scale, n=n, data=data, ckpt_dir=ckpt_dir,
                              device=device, last=last):
            typer.echo(str(path))


def run_plots(target: str, *, log_scale: bool, n: int, data: Path | None,
              ckpt_dir: str | None, device: str, last: bool = False) -> list[Path]:
    from study.data.normalize import denormalize
    from study.flow_matching import evaluate as ev
    from study.flow_matching import plots
    from study.runs.paths import METRICS_CSV
    from study.runtime.device import resolve_device

    ev.check_generation_args(n=n, solver="euler", steps=100)
    checkpoint = resolve_checkpoint(target, ckpt_dir, last=last)
    folder = checkpoint.parent
    torch_device = resolve_device(device)
    loaded = ev.load_flow_model(checkpoint, torch_device)  # a refused checkpoint writes nothing
    heldout, _ = ev.heldout_data(loaded.config, data)
    if heldout.shape[1] != loaded.dim:
        from study.errors import UsageError

        raise UsageError(f"the data has dimension {heldout.shape[1]} but the checkpoint "
                         f"{checkpoint} was trained on dimension {loaded.dim}")
    written = [plots.plot_loss_curves(folder / METRICS_CSV, folder / "loss.png",
                                      log_scale=log_scale)]
    samples, info = ev.generate(loaded, n, solver="euler", steps=100, seed=0,
                                device=torch_device, return_trajectory=loaded.dim == 2)
    if loaded.dim == 2:
        paths = denormalize(info.trajectory[:, :TRAJECTORIES], loaded.stats)
        written.append(plots.plot_samples_2d(samples, heldout, folder / "samples.png",
                                             trajectories=paths, max_trajectories=TRAJECTORIES))
    else:
        written.append(plots.plot_marginals(samples, heldout, folder / "marginals.png"))
    return written
