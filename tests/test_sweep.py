"""`flowctl sweep` in-process: help, routing, dry runs, the print launcher, status, refusals."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study.flow_matching.config import TrainingConfig
from tests.support.helpers import REPO_ROOT, TINY, cli, vectors_file

WIDE = {"COLUMNS": "200"}


def tiny_grid(tmp_path, grid: dict, **extra) -> str:
    data = vectors_file(tmp_path)
    base = {"dataset": str(data), "batch_size": 64, "width": 16, "depth": 2, "warmup_steps": 5,
            "epochs": 2, "patience": 0, "checkpoint_interval": 0}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"base": base, "grid": grid, **extra}))
    return str(path)


@pytest.mark.parametrize("command", [["sweep"], ["sweep", "run"], ["sweep", "status"],
                                     ["compare"], ["slurm"], ["slurm", "submit"]])
def test_help_has_an_example(command):
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage" in result.stdout and "Example" in result.stdout


def test_app_help_lists_the_new_commands():
    out = cli("--help").stdout
    for name in ("sweep", "compare", "slurm"):
        assert name in out


def test_grid_file_goes_to_run_and_dry_run_changes_nothing(tmp_path, isolated_run_root):
    grid = tiny_grid(tmp_path, {"flow": ["icfm", "otcfm"], "seed": [0]})
    result = cli("sweep", grid, "--dry-run", "--parallel", "2")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sweep g: 2 points, 2 at a time (--parallel 2)")
    assert "start" in lines[1] and "mlp-icfm-vectors-640x2-none-s0" in lines[1]
    assert not isolated_run_root.exists()


def test_print_launcher_writes_nothing_and_prints_one_command_each(tmp_path, isolated_run_root):
    grid = tiny_grid(tmp_path, {"seed": [0, 1]})
    result = cli("sweep", grid, "--launcher", "print", "--wandb-mode", "disabled")
    assert result.exit_code == 0, result.stderr
    assert not isolated_run_root.exists()  # no folder, no config file
    commands = result.stdout.splitlines()
    assert len(commands) == 2
    for seed, command in enumerate(commands):
        words = shlex.split(command)
        assert words[:6] == ["flowctl", "train", "--resume", "auto", "--plain", "--wandb-mode"]
        assert {"group=g", f"run_name=mlp-icfm-vectors-640x2-none-s{seed}", "epochs=2",
                "width=16"} <= set(words)
        assert f"seed={seed}" in words or seed == 0  # seed 0 is the default: not written
    # The printed command is a real one: it trains the point.
    assert cli(*shlex.split(commands[0])[1:]).exit_code == 0
    status = json.loads(cli("sweep", "status", grid, "--json").stdout)
    assert [p["state"] for p in status["points"]] == ["finished", "pending"]
    assert status["summary"] == "2 points: 1 finished, 1 pending"
    again = cli("sweep", grid, "--launcher", "print", "--wandb-mode", "disabled")
    assert again.stdout.splitlines() == commands[1:]  # only what is left


def test_print_words_rebuild_each_points_config_exactly(tmp_path):
    """Every kind of value (dicts, lists of stages, floats, None, bools) survives the words."""
    from study.flow_matching.config_load import assignments_to_overrides, load_config
    from study.sweep.commands import assignment_words
    from study.sweep.grid import load_grid
    from study.sweep.identity import config_hash

    grid = tiny_grid(tmp_path, {"lr": [1e-5, 0.25], "ema_warmup": [False]},
                     include=[{"scheduler": {"type": "step", "gamma": 0.5}, "seed": 7,
                               "stages": [{"name": "a", "epochs": 1}, {"name": "b", "epochs": 1,
                                                                       "flow": "otcfm"}]}])
    for point in load_grid(Path(grid)).points:
        words = assignment_words(point.config.to_dict())
        rebuilt = load_config(None, assignments_to_overrides(words))
        assert config_hash(rebuilt.to_dict()) == point.config_hash, words


def test_status_table_and_json_of_a_fresh_grid(tmp_path):
    grid = tiny_grid(tmp_path, {"flow": ["icfm", "otcfm"]})
    table = cli("sweep", "status", grid)
    assert table.exit_code == 0 and "2 points: 2 pending" in table.stdout
    data = json.loads(cli("sweep", "status", grid, "--json").stdout)
    assert data["group"] == "g" and data["counts"] == {"pending": 2}
    assert {p["point"] for p in data["points"]} == {"mlp-icfm-vectors-640x2-none",
                                                    "mlp-otcfm-vectors-640x2-none"}


def test_a_run_holding_another_config_under_a_points_name_is_refused(tmp_path, isolated_run_root):
    grid = tiny_grid(tmp_path, {"seed": [0]})
    data = vectors_file(tmp_path)
    trained = cli("train", "--dataset", data, "--epochs", "1", "--seed", "0", "--lr", "0.01",
                  "--run-name", "mlp-icfm-vectors-640x2-none-s0", *TINY)
    assert trained.exit_code == 0, trained.stderr
    result = cli("sweep", grid)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "point mlp-icfm-vectors-640x2-none-s0" in result.stderr
    assert f"lr: 0.01 in the run, {TrainingConfig().lr} in the grid" in result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--launcher", "kube"], "unknown --launcher 'kube'"),
    (["--parallel", "0"], "--parallel must be at least 1"),
    (["--launcher", "slurm", "--time", "soon"], "is not a Slurm time"),
])
def test_bad_flags_are_one_line_exit_2(tmp_path, args, fragment):
    result = cli("sweep", tiny_grid(tmp_path, {"seed": [0]}), *args)
    assert result.exit_code == 2 and fragment in result.stderr
    assert result.stderr.count("\n") == 1


def test_missing_grid_file_is_one_line_exit_2(tmp_path):
    result = cli("sweep", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "cannot read grid" in result.stderr


def test_sweep_status_and_compare_do_not_import_torch(tmp_path):
    grid = tiny_grid(tmp_path, {"seed": [0]})
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom study.cli.app import app\n"
        f"r = CliRunner().invoke(app, ['sweep', 'status', {grid!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "CliRunner().invoke(app, ['compare', '--group', 'g'])\n"
        "print(sorted(m for m in ('torch', 'wandb') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
