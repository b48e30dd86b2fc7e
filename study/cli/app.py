"""The `flowctl` command: wires one module per subcommand into a Typer app.

Each command module keeps its heavy imports (torch, wandb) inside the command function,
so `flowctl --help` and `flowctl list-runs` start without importing either.
"""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    name="flowctl",
    help="Train flow-matching models and manage the experiments around them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    if debug:
        os.environ["FLOWCTL_DEBUG"] = "1"


def _register() -> None:
    from study.cli import compare as compare_cmd
    from study.cli import eval as eval_cmd
    from study.cli import (
        inspect_ckpt,
        list_runs,
        plot,
        prune,
        resume,
        sample,
        slurm,
        sweep,
        train,
        ui,
    )

    app.command("train")(train.train)
    app.command("resume")(resume.resume)
    app.command("inspect-ckpt")(inspect_ckpt.inspect_ckpt)
    app.command("list-runs")(list_runs.list_runs)
    app.command("sample")(sample.sample)
    app.command("eval")(eval_cmd.eval_command)
    app.command("plot")(plot.plot)
    app.add_typer(sweep.sweep_app, name="sweep")
    app.command("compare")(compare_cmd.compare)
    app.add_typer(slurm.slurm_app, name="slurm")
    app.command("ui")(ui.ui)
    app.command("prune")(prune.prune)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
