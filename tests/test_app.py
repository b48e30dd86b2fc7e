"""study.cli.app: lazy command registration, so `flowctl --help` costs little more than Typer.

Speed itself is measured by scripts/bench_cli.py (docs/benchmarks.md); these tests check what
makes it fast, which does not depend on the machine's load: what each command line imports.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from study.cli.app import COMMANDS
from tests.support.helpers import REPO_ROOT, cli

HEAVY = ("torch", "wandb", "numpy", "pydantic", "rich")


IMPORTS_OF = """
import json, sys
from study.cli.app import app
try:
    app(args=sys.argv[1:], prog_name="flowctl")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imports_of(*argv: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """Top-level packages and study.* modules loaded by `flowctl ARGV` (a fresh interpreter)."""
    result = subprocess.run([sys.executable, "-c", IMPORTS_OF, *argv], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "120"})
    names = json.loads(result.stderr.splitlines()[-1])
    return {n for n in names if n.startswith("study.")} | {n.split(".")[0] for n in names}, result


def test_help_imports_no_command_module_and_nothing_heavy():
    modules, result = imports_of("--help")
    assert "list-runs" in result.stdout and "typer" in modules
    assert not {m for m in modules if m.startswith("study.cli.") and m != "study.cli.app"}
    assert not set(HEAVY) & modules


def test_a_command_imports_only_its_own_module():
    modules, result = imports_of("list-runs", "--help")
    assert "Example:" in result.stdout
    commands = {m for m in modules if m.startswith("study.cli.") and m not in (
        "study.cli.app", "study.cli.common")}
    assert commands == {"study.cli.list_runs"}


def test_list_runs_json_imports_no_rich(isolated_run_root):
    (isolated_run_root / "one").mkdir(parents=True)
    modules, result = imports_of("list-runs", "--json")
    assert '"run_name": "one"' in result.stdout
    assert not {"torch", "wandb", "numpy", "rich"} & modules


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listed_help_matches_each_command_docstring(name: str):
    module, function, short_help = COMMANDS[name]
    target = getattr(importlib.import_module(module), function)
    docstring = target.info.help if hasattr(target, "info") else target.__doc__  # a Typer sub-app
    first_line = docstring.strip().splitlines()[0]
    assert first_line.startswith(short_help.removesuffix("...")), (short_help, first_line)
    assert name in cli("--help").stdout


def test_every_command_is_listed():
    app_text = (REPO_ROOT / "study" / "cli").glob("*.py")
    # common: shared options; torchrun: the --nproc launcher of train and resume.
    modules = {path.stem for path in app_text} - {"__init__", "app", "common", "torchrun"}
    assert modules == {entry[0].rsplit(".", 1)[1] for entry in COMMANDS.values()}


def test_a_mistyped_command_suggests_the_right_one():
    result = cli("list-run")
    assert result.exit_code == 2
    assert "No such command 'list-run'. Did you mean 'list-runs'?" in result.stderr


def test_debug_flag_reaches_the_command(tmp_path, monkeypatch):
    from study.errors import UsageError

    monkeypatch.setenv("FLOWCTL_DEBUG", "0")  # undone after the test, whatever --debug sets
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert cli("inspect-ckpt", empty).exit_code == 2  # one line, no traceback
    with pytest.raises(UsageError, match="is empty"):  # --debug: the error, for its traceback
        cli("--debug", "inspect-ckpt", empty)


def test_version_prints_the_package_version_and_imports_nothing_heavy():
    import study

    modules, result = imports_of("--version")
    assert result.stdout == f"flowctl {study.__version__}\n"
    assert not set(HEAVY) & modules


def test_child_processes_never_put_their_working_folder_first(tmp_path):
    """flowctl's Python children get PYTHONSAFEPATH: a study/ package in the working folder
    that would shadow flowctl under `python -m` is not imported."""
    from study.install import child_env

    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "__init__.py").write_text("raise ImportError('shadowed')\n")
    probe = [sys.executable, "-m", "study.cli.app", "--version"]
    shadowed = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"})
    assert "shadowed" in shadowed.stderr  # the attack is real without the setting
    safe = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=child_env())
    assert safe.returncode == 0 and safe.stdout.startswith("flowctl "), safe.stderr
