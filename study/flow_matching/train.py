"""Compatibility shim: `python -m study.flow_matching.train`, the original study's entry point.

The same flags and behaviour as `flowctl train` (whose command it runs: the one module of
flow_matching that imports the CLI, so the package-order test leaves it out). flowctl's own
processes (torchrun workers, Slurm jobs, sweep points) start through `study.cli.app`.

Example: python -m study.flow_matching.train --arch mlp --flow icfm --dataset 1k --epochs 2
"""

from __future__ import annotations

import typer

from study.cli.train import train


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train)
    app()


if __name__ == "__main__":
    main()
