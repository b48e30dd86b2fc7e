"""Run a flowctl command in a fresh interpreter and check that it never imported torch or
wandb (`--help`, `list-runs` and the dashboard must stay light)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.helpers import REPO_ROOT

# Run `app` on the command line, then fail if torch or wandb was imported on the way.
RUN_AND_CHECK = """
try:
    app(args=sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
heavy = [name for name in ("torch", "wandb") if name in sys.modules]
assert not heavy, f"expected no torch/wandb import, got {heavy}"
print("ok")
"""

LIST_RUNS_MAIN = """
import sys, typer
from study.cli.list_runs import list_runs
app = typer.Typer()
app.callback()(lambda: None)
app.command("list-runs")(list_runs)
""" + RUN_AND_CHECK

APP_MAIN = """
import sys
from study.cli.app import app
""" + RUN_AND_CHECK


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=60)
