"""`python -m study.flow_matching.train`: the same flags and behaviour as `flowctl train`.

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
