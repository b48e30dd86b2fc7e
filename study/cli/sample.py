"""`flowctl sample`: draw samples from a trained run by integrating its ODE.

torch is imported inside the command: `flowctl --help` must not pay for it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from study.cli.common import CkptDir, Device, Last, resolve_checkpoint, user_errors

FORMATS = ("pt", "npy")


def sample(
    target: str = typer.Argument(..., help="A run name, a run folder (its best.pt) or a checkpoint file."),
    n: int = typer.Option(1000, "--n", help="Number of samples."),
    solver: str = typer.Option("euler", "--solver", help="euler | midpoint | rk4 | dopri5 (adaptive)."),
    steps: int = typer.Option(100, "--steps", help="Fixed solver steps (ignored by dopri5)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the source draws x_0: same seed, same samples."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Samples integrated at once."),
    out_format: str | None = typer.Option(None, "--format", help="pt | npy.  [default: from --out, else pt]"),
    out: Path | None = typer.Option(None, "--out", help="Output file.  [default: {run folder}/samples.pt]"),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file (never a run's own files)."),
    ckpt_dir: CkptDir = None,
    last: Last = False,
    device: Device = "auto",
) -> None:
    """Generate samples in data units (de-normalized) and save them as a [N, D] array.

    x_0 is drawn from the run's source with --seed; the EMA weights of best.pt carry it from t=0 to t=1. Prints the file, the shape and the number of velocity evaluations (NFE).

    Example: flowctl sample mlp-icfm-moons-none --n 5000 --solver rk4 --steps 20 --format npy
    """
    with user_errors():
        from study.errors import UsageError
        from study.flow_matching.evaluate import check_generation_args

        check_generation_args(n=n, solver=solver, steps=steps, batch_size=batch_size)
        if out_format is None:
            out_format = "npy" if out is not None and out.suffix.lower() == ".npy" else "pt"
        if out_format not in FORMATS:
            raise UsageError(f"unknown --format {out_format!r}; choose one of: {', '.join(FORMATS)}")
        if out is not None:
            check_out(out, out_format, force=force)
        path, shape, nfe = run_sample(target, n=n, solver=solver, steps=steps, seed=seed,
                                      batch_size=batch_size, out_format=out_format, out=out,
                                      ckpt_dir=ckpt_dir, last=last, device=device)
    typer.echo(f"wrote {path}  shape {'x'.join(map(str, shape))}  nfe {nfe}")


def check_out(out: Path, out_format: str, *, force: bool) -> None:
    """--out must name a new file (or --force), never a run's own, in the format written."""
    from study.errors import UsageError
    from study.runs.outputs import check_output

    check_output(out, suffixes=tuple(f".{name}" for name in FORMATS), force=force)
    if out.suffix.lower() != f".{out_format}":
        raise UsageError(f"--format {out_format} but --out {out} names a {out.suffix} file; "
                         "make them agree")


def run_sample(target: str, *, n: int, solver: str, steps: int, seed: int, batch_size: int,
               out_format: str, out: Path | None, ckpt_dir: str | None, last: bool,
               device: str) -> tuple[Path, tuple[int, ...], int]:

    from study.flow_matching.evaluate import check_finite, generate, load_flow_model
    from study.runs.checkpoint import write_atomic
    from study.runtime.device import resolve_device

    torch_device = resolve_device(device)
    loaded = load_flow_model(resolve_checkpoint(target, ckpt_dir, last=last), torch_device)
    samples, info = generate(loaded, n, solver=solver, steps=steps, seed=seed,
                             batch_size=batch_size, device=torch_device)
    check_finite(samples, loaded.path)
    path = out if out is not None else loaded.run_dir / f"samples.{out_format}"
    if out_format == "npy":
        import numpy as np

        write_atomic(path, lambda handle: np.save(handle, samples.numpy()))
    else:
        import torch

        write_atomic(path, lambda handle: torch.save(samples, handle))
    return path, tuple(samples.shape), info.nfe
