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
    """The Commands section of `flowctl --help` has one line per registered command and
    nothing else, each with a summary that the command's own --help shows too (the list is
    written by hand in study/cli/app.py so that --help imports no command module)."""
    result = cli("--help")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    section = lines[lines.index("Commands:") + 1:]
    section = section[:next((i for i, line in enumerate(section) if not line.strip()), len(section))]
    listed = {}
    for line in section:
        name, _, summary = line.strip().partition(" ")
        listed[name] = summary.strip()
    assert sorted(listed) == sorted({path[0] for path in COMMANDS})
    for name, summary in listed.items():
        assert summary.endswith("...") and len(summary) > 10, (name, summary)
        own = " ".join(cli(name, "--help").stdout.split())
        assert summary.removesuffix("...") in own, f"{name}: {summary!r} is not in its --help"


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_has_help_with_an_example(path):
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage" in result.stdout
    assert "Example: flowctl " + " ".join(path) in " ".join(result.stdout.split()), result.stdout
