"""The `flowctl` command: wires one module per subcommand into a Typer app.

Start-up is kept to Typer itself: a command's module is imported only when that command runs
or shows its help (`COMMANDS` holds what `flowctl --help` lists), help is Click's plain
formatter (Typer's rich help imports ~65 ms of rich.markdown, pygments and friends), and each
command module keeps its heavy imports (torch, wandb) inside the command function.
"""

from __future__ import annotations

import difflib
import importlib
import os

import typer
from typer.core import TyperGroup

# name -> (module, function or Typer sub-app, the first words of its docstring for `--help`).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("study.cli.train", "train", "Train a flow-matching model; keeps best.pt and last.pt..."),
    "resume": ("study.cli.resume", "resume", "Continue a run exactly where it stopped..."),
    "inspect-ckpt": ("study.cli.inspect_ckpt", "inspect_ckpt", "Show what a checkpoint holds..."),
    "list-runs": ("study.cli.list_runs", "list_runs", "List the runs under the checkpoint root..."),
    "sample": ("study.cli.sample", "sample", "Generate samples in data units (de-normalized)..."),
    "eval": ("study.cli.eval", "eval_command", "Evaluate a run's best.pt: W2 and MMD²..."),
    "plot": ("study.cli.plot", "plot", "Write loss.png (train/val loss from metrics.csv)..."),
    "sweep": ("study.cli.sweep", "sweep_app", "Train a grid of runs (an ablation) exactly once each..."),
    "compare": ("study.cli.compare", "compare", "Compare the finished runs of a group..."),
    "slurm": ("study.cli.slurm", "slurm_app", "Run flowctl on Slurm: batch scripts that save and requeue..."),
    "prune": ("study.cli.prune", "prune", "Remove run folders by rule..."),
    "ui": ("study.cli.ui", "ui", "Serve a live dashboard of the runs..."),
}


class LazyCommands(TyperGroup):
    """A Typer group whose commands are built the first time they are asked for."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute, _ = COMMANDS[cmd_name]
            target = getattr(importlib.import_module(module), attribute)
            if isinstance(target, typer.Typer):  # a command with sub-commands (sweep, slurm)
                command = typer.main.get_group(target)
                command.name = cmd_name
            else:
                single = typer.Typer(add_completion=False, rich_markup_mode=None,
                                     pretty_exceptions_enable=False)
                single.command(cmd_name)(target)
                command = typer.main.get_command(single)
            self.commands[cmd_name] = command
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx, args):
        """Typer suggests only among commands already built: suggest among all of them."""
        if args and args[0] not in COMMANDS and not args[0].startswith("-"):
            matches = difflib.get_close_matches(args[0], list(COMMANDS))
            hint = f" Did you mean {', '.join(map(repr, matches))}?" if matches else ""
            ctx.fail(f"No such command {args[0]!r}.{hint}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short_help) for name, (_, _, short_help) in COMMANDS.items()])


app = typer.Typer(
    name="flowctl",
    cls=LazyCommands,
    help="Train flow-matching models and manage the experiments around them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        import study

        typer.echo(f"flowctl {study.__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Show flowctl's version and exit."),
) -> None:
    if debug:
        os.environ["FLOWCTL_DEBUG"] = "1"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
