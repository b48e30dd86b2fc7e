"""What every command shares: one-line errors, exit codes, the --debug switch.

Imports neither torch nor wandb: `flowctl --help` and `list-runs` must start fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Annotated

import typer

from study.errors import FlowctlError
from study.runs.display import printable
from study.secrets import mask_text

EXIT_USAGE = 2
EXIT_FAILED = 1


def debug_enabled() -> bool:
    return os.environ.get("FLOWCTL_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print `error: message` as one line on stderr (credentials masked); return the Exit."""
    first_line = printable(mask_text(" ".join(str(message).split())))
    typer.echo(f"error: {first_line}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn flowctl's own errors into one line + exit code; keep tracebacks for --debug."""
    try:
        yield
    except FlowctlError as err:
        if debug_enabled():
            raise
        raise fail(str(err), err.exit_code) from None


def warn(message: str) -> None:
    """One line on stderr, for a value that wins over another or a degraded feature."""
    print(f"warning: {printable(mask_text(message))}", file=sys.stderr)


def resolve_checkpoint(target: str, ckpt_dir: str | os.PathLike | None, *, last: bool = False):
    """TARGET (a file, a run folder or a run name) -> the checkpoint a command reads: best.pt,
    else last.pt (`last`: the other way round), with one note on stderr when it falls back."""
    from study.runs.paths import BEST_FIRST, LAST_FIRST, find_checkpoint

    prefer = LAST_FIRST if last else BEST_FIRST
    path = find_checkpoint(target, ckpt_dir, prefer=prefer)
    if path.name != prefer[0] and path.name in prefer and not _is_file_target(target, path):
        print(f"note: {path.parent.name} has no {prefer[0]} yet; using {path.name}", file=sys.stderr)
    return path


def _is_file_target(target: str, path) -> bool:
    from pathlib import Path

    return Path(target).expanduser().is_file()


Last = Annotated[bool, typer.Option(
    "--last", help="Use the run's last.pt (its newest state) instead of best.pt.")]
# How-to-run options shared by `train` and `resume` (not part of the run's config).
CkptDir = Annotated[str | None, typer.Option(
    "--ckpt-dir", help="Checkpoint root.  [default: $FLOWCTL_CKPT_DIR or study/checkpoints]")]
WandbProject = Annotated[str, typer.Option("--wandb-project")]
WandbMode = Annotated[str | None, typer.Option(
    "--wandb-mode", help="offline | online | disabled ($WANDB_MODE wins).  [default: offline; "
    "a resume: the run's own]")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
Threads = Annotated[int | None, typer.Option(
    "--threads", help="CPU intra-op threads.  [default: $OMP_NUM_THREADS, else 1 for models under "
    "1M parameters (faster on small models), else torch's default]")]
RequeueSignal = Annotated[str | None, typer.Option(
    "--requeue-signal", help="Also stop gracefully on this signal (e.g. SIGUSR1 for SLURM).")]
Plain = Annotated[bool, typer.Option("--plain", help="Plain progress lines even on a terminal.")]
PairingWorkers = Annotated[int | None, typer.Option(
    "--pairing-workers", help="Threads solving the next batches' OT plans while a step trains "
    "(0: pair on the critical path).  [default: OT flows: spare cores, at most 4]")]
Nproc = Annotated[int | None, typer.Option(
    "--nproc", help="Train on N processes under torchrun (one per GPU; gloo on CPUs).")]
MaxRestarts = Annotated[int, typer.Option(
    "--max-restarts", help="With --nproc: restarts of the worker group after a rank dies; "
    "restarted workers resume from last.pt.")]
StrictWorldSize = Annotated[bool, typer.Option(
    "--strict-world-size", help="Refuse to resume on another number of processes.")]
TensorBoard = Annotated[bool, typer.Option(
    "--tensorboard", help="Also write scalars to {run}/tb/ (needs the tensorboard package).")]
Tracker = Annotated[list[str] | None, typer.Option(
    "--tracker", help="Where metrics go besides metrics.csv: wandb | mlflow | tensorboard | none; "
    "repeat it or comma-separate (--tracker wandb,mlflow). Default: wandb (plus tensorboard "
    "with --tensorboard); a resume keeps the run's trackers.")]
