"""Every registered command (and sub-command) answers --help with usage and an example."""

from __future__ import annotations

import pytest
import typer

from study.cli.app import app
from tests.support.helpers import cli


def command_paths(command=None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """("train",), ("sweep", "status"), ...: every command the app can build, by name."""
    command = command or typer.main.get_command(app)
    paths = []
    with typer.Context(command) as ctx:  # Typer's own Click, not the click package
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if hasattr(sub, "list_commands"):  # a group: sweep, slurm
                paths += command_paths(sub, (*prefix, name))
            else:
                paths.append((*prefix, name))
    return paths


COMMANDS = command_paths()


def test_the_app_registers_the_documented_commands():
    names = {path[0] for path in COMMANDS}
    assert {"train", "resume", "list-runs", "inspect-ckpt", "sample", "eval", "plot", "sweep",
            "compare", "slurm", "prune", "ui"} <= names


def test_app_help_lists_every_top_level_command():
    out = cli("--help").stdout
    for name in {path[0] for path in COMMANDS}:
        assert name in out, name


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_has_help_with_an_example(path):
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage" in result.stdout
    assert "Example: flowctl " + " ".join(path) in " ".join(result.stdout.split()), result.stdout
