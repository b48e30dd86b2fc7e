"""Issue 24, leaks and injection: credentials glued to names, values that would become shell
lines in a Slurm script, terminal escapes in file data, files read from outside the root."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.faults.attacks import fingerprint
from tests.helpers import cli, error_line, run_flags, vectors_file

GLUED = "team-ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2"  # a GitHub token's shape after `team-`
TOKEN = GLUED.removeprefix("team-")


@pytest.fixture
def glued_run(tmp_path, isolated_run_root):
    result = cli("train", "--run-name", "g", "--group", GLUED,
                 *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    return isolated_run_root / "g"


def test_a_glued_token_is_masked_in_run_json_list_runs_and_inspect_ckpt(glued_run):
    assert TOKEN not in (glued_run / "run.json").read_text()
    assert json.loads((glued_run / "run.json").read_text())["group"] == "team-[SECRET]"
    for args in (("list-runs",), ("list-runs", "--json"), ("inspect-ckpt", "g"),
                 ("inspect-ckpt", "g", "--json")):
        result = cli(*args)
        assert result.exit_code == 0, result.stderr
        assert TOKEN not in result.stdout + result.stderr, args


# -- a value that would become a shell line in slurm.sbatch; names no folder can hold -------------
def grid_or_config(tmp_path, **fields):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"dataset": "moons", "epochs": 3, "run_name": "big", **fields}))
    return path


@pytest.mark.parametrize("args, fragment", [
    (["--partition", "gpu\nrm -rf ~"], "--partition 'gpu\\nrm -rf ~' is not a Slurm partition"),
    (["--partition", "gpu --wrap=x"], "is not a Slurm partition"),
    (["--job-name", "j\n#SBATCH --partition=x"], "--job-name"),
    (["--job-name", "j\x1b]0;owned\x07"], "control character"),
])
def test_slurm_submit_refuses_values_that_would_break_the_script(tmp_path, args, fragment):
    config = grid_or_config(tmp_path)
    before = fingerprint(tmp_path)
    for dry in ((), ("--dry-run",)):
        error_line(cli("slurm", "submit", config, *args, *dry), fragment)
    assert fingerprint(tmp_path) == before


def test_a_run_name_with_a_newline_never_reaches_a_script(tmp_path):
    config = grid_or_config(tmp_path, run_name="big\nrm -rf ~")
    before = fingerprint(tmp_path)
    error_line(cli("slurm", "submit", config, "--dry-run"), "control character '\\n'")
    error_line(cli("slurm", "submit", config), "control character")
    assert fingerprint(tmp_path) == before


def test_sweep_on_slurm_refuses_a_partition_with_a_newline(tmp_path, isolated_run_root):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": {"dataset": "moons", "epochs": 1},
                                    "grid": {"seed": [0, 1]}}))
    before = fingerprint(tmp_path)
    error_line(cli("sweep", grid, "--launcher", "slurm", "--dry-run", "--partition", "a\nb"),
               "is not a Slurm partition")
    assert fingerprint(tmp_path) == before


@pytest.mark.parametrize("name, fragment", [
    ("a\nb", "control character '\\n'"), ("a\rb", "control character"),
    ("x\x1b[2Jy", "control character '\\x1b'"), ("nul\x00", "control character '\\x00'"),
    ("line\u2028sep", "control character"), (".hidden", "starts with '.'"),
    ("..", "starts with '.'"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("   ", "is empty"), ("a" * 256, "256 bytes long"), ("é" * 128, "256 bytes long"),
])
def test_train_refuses_run_names_no_folder_can_hold(tmp_path, isolated_run_root, name, fragment):
    data = vectors_file(tmp_path)
    before = fingerprint(tmp_path)
    error_line(cli("train", "--run-name", name, *run_flags(data, epochs=1)), fragment)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"dataset": str(data), "run_name": name}))
    error_line(cli("train", "--config", config, *run_flags(data, epochs=1)), fragment)
    config.unlink()
    assert fingerprint(tmp_path) == before and not isolated_run_root.exists()


def test_the_longest_name_a_folder_can_hold_trains(tmp_path, isolated_run_root):
    name = "é" * 127 + "a"  # 255 bytes
    result = cli("train", "--run-name", name, *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr
    assert (isolated_run_root / name / "best.pt").is_file()
