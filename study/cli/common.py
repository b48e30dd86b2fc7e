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
from study.secrets import mask_text

EXIT_USAGE = 2
EXIT_FAILED = 1


def debug_enabled() -> bool:
    return os.environ.get("FLOWCTL_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print `error: message` as one line on stderr (credentials masked); return the Exit."""
    first_line = mask_text(" ".join(str(message).split()))
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
    print(f"warning: {mask_text(message)}", file=sys.stderr)


# How-to-run options shared by `train` and `resume` (not part of the run's config).
CkptDir = Annotated[str | None, typer.Option(
    "--ckpt-dir", help="Checkpoint root.  [default: $FLOWCTL_CKPT_DIR or study/checkpoints]")]
WandbProject = Annotated[str, typer.Option("--wandb-project")]
WandbMode = Annotated[str | None, typer.Option(
    "--wandb-mode", help="offline | online | disabled ($WANDB_MODE wins).  [default: offline]")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
RequeueSignal = Annotated[str | None, typer.Option(
    "--requeue-signal", help="Also stop gracefully on this signal (e.g. SIGUSR1 for SLURM).")]
Plain = Annotated[bool, typer.Option("--plain", help="Plain progress lines even on a terminal.")]
TensorBoard = Annotated[bool, typer.Option(
    "--tensorboard", help="Also write scalars to {run}/tb/ (needs the tensorboard package).")]
