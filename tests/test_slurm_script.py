"""sbatch scripts checked against expected text, and the submit path with an `sbatch`
stand-in on PATH that records its arguments (the real scheduler: test_slurm_e2e.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import REPO_ROOT, cli, stand_in, vectors_file

BIN = Path(sys.executable).parent


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"dataset": "moons", "epochs": 3, "run_name": "big"}))
    return path


def test_one_run_on_one_node_is_plain_flowctl_train_as_the_batch_shell(tmp_path):
    config = config_file(tmp_path)
    root = tmp_path / "ckpt"
    result = cli("slurm", "submit", config, "--ckpt-dir", root, "--time", "4:00:00",
                 "--partition", "gpu", "--gpus-per-node", "1", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"""#!/bin/bash
#SBATCH --job-name=big
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --partition=gpu
#SBATCH --time=4:00:00
#SBATCH --output={root}/big/slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
# flowctl: run big. On USR2 it saves last.pt and requeues this job (at most
# 5 times); the requeued job continues the same run (--resume auto).
set -euo pipefail
cd {REPO_ROOT}
export FLOWCTL_MAX_REQUEUES=5
export PATH={BIN}:"$PATH"  # flowctl and torchrun of this venv
export PYTHONSAFEPATH=1  # no folder of the job's own can shadow flowctl (study.install)
export FLOWCTL_SBATCH_SCRIPT={root}/big/slurm.sbatch
echo "flowctl: job $SLURM_JOB_ID on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}"
exec flowctl train --config {config} --resume auto --requeue-signal SIGUSR2 --plain --ckpt-dir {root}
"""
    assert not root.exists()  # a dry run writes nothing


def test_several_nodes_run_torchrun_under_srun_with_the_rendezvous_on_the_first_host(tmp_path):
    config = config_file(tmp_path)
    root = tmp_path / "ckpt"
    result = cli("slurm", "submit", config, "--ckpt-dir", root, "--nodes", "2",
                 "--gpus-per-node", "4", "--signal", "USR1@300", "--max-requeues", "3",
                 "--wandb-mode", "offline", "--dry-run")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --gpus-per-node=4" in lines
    assert "#SBATCH --signal=USR1@300" in lines  # no B:, the srun step gets it
    assert "export FLOWCTL_MAX_REQUEUES=3" in lines
    assert lines[-6:-1] == [
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "# torchrun ignores USR1 (its default action would kill the workers mid-save); the",
        "# workers install their own handler, and rank 0 requeues the job.",
        "srun --kill-on-bad-exit=1 bash -c 'trap \"\" USR1; exec \"$@\"' torchrun \\",
        '  torchrun --nnodes "$SLURM_NNODES" --nproc-per-node 4 --rdzv-id "$SLURM_JOB_ID" '
        '--rdzv-backend c10d --rdzv-endpoint "$head:29500" \\',
    ]
    assert lines[-1] == (f"  -m study.cli.app train --config {config} --resume auto "
                         f"--requeue-signal SIGUSR1 --plain --ckpt-dir {root} --wandb-mode offline")


@pytest.mark.parametrize("args, fragment", [
    (["--signal", "KILL@10"], "not a catchable signal"),
    (["--nodes", "0"], "--nodes must be at least 1"),
    (["--time", "tomorrow"], "is not a Slurm time"),
])
def test_bad_options_are_one_line_exit_2(tmp_path, args, fragment):
    result = cli("slurm", "submit", config_file(tmp_path), *args, "--dry-run")
    assert result.exit_code == 2 and fragment in result.stderr


def test_submit_writes_the_script_and_hands_it_to_sbatch(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{stand_in(tmp_path, 'sbatch', 'echo 4242')}:/usr/bin:/bin")
    config, root = config_file(tmp_path), tmp_path / "ckpt"
    dry = cli("slurm", "submit", config, "--ckpt-dir", root, "--dry-run").stdout
    result = cli("slurm", "submit", config, "--ckpt-dir", root, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    script = root / "big" / "slurm.sbatch"
    assert info == {"job_id": "4242", "run": "big", "run_dir": str(root / "big"),
                    "script": str(script), "log": str(root / "big" / "slurm-4242.out")}
    assert (tmp_path / "sbatch.args").read_text() == f"--parsable {script}\n"
    assert script.read_text() == dry


def test_sbatch_refusing_or_missing_is_one_line(tmp_path, monkeypatch):
    refusing = stand_in(tmp_path, "sbatch", "echo 'sbatch: error: invalid partition' >&2; exit 1")
    monkeypatch.setenv("PATH", f"{refusing}:/usr/bin:/bin")
    result = cli("slurm", "submit", config_file(tmp_path), "--ckpt-dir", tmp_path / "c")
    assert result.exit_code == 1
    assert "sbatch refused" in result.stderr and "invalid partition" in result.stderr
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = cli("slurm", "submit", config_file(tmp_path), "--ckpt-dir", tmp_path / "c")
    assert result.exit_code == 2 and "sbatch not found" in result.stderr


def sweep_grid(tmp_path: Path) -> Path:
    data = vectors_file(tmp_path)
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump({"base": {"dataset": str(data), "epochs": 2},
                                    "grid": {"flow": ["icfm", "otcfm"]}}))
    return path


def test_sweep_slurm_dry_run_is_one_job_array_of_the_pending_points(tmp_path, isolated_run_root):
    grid = sweep_grid(tmp_path)
    result = cli("sweep", grid, "--launcher", "slurm", "--dry-run", "--parallel", "2",
                 "--partition", "cpu", "--time", "30", "--wandb-mode", "disabled")
    assert result.exit_code == 0, result.stderr
    root = isolated_run_root.absolute()
    folder = root / ".sweeps" / "abl"
    script = next(iter(line.split("=", 1)[1] for line in result.stdout.splitlines()
                       if line.startswith("export FLOWCTL_SBATCH_SCRIPT=")))
    assert Path(script).parent == folder and Path(script).name.startswith("array-")
    assert result.stdout == f"""#!/bin/bash
#SBATCH --job-name=abl
#SBATCH --array=0-1%2
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --partition=cpu
#SBATCH --time=30
#SBATCH --output={folder}/slurm-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
# flowctl sweep abl: one array task per point; each continues its run (--resume auto)
# and requeues itself on USR2 (at most 5 times).
set -euo pipefail
cd {REPO_ROOT}
export FLOWCTL_MAX_REQUEUES=5
export PATH={BIN}:"$PATH"  # flowctl and torchrun of this venv
export PYTHONSAFEPATH=1  # no folder of the job's own can shadow flowctl (study.install)
export FLOWCTL_SBATCH_SCRIPT={script}
CONFIGS=(
  {root}/mlp-icfm-vectors-640x2-none/sweep.yaml
  {root}/mlp-otcfm-vectors-640x2-none/sweep.yaml
)
config=${{CONFIGS[$SLURM_ARRAY_TASK_ID]}}
exec >>"$(dirname "$config")/train.log" 2>&1
echo "==== flowctl sweep: slurm job ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}} ===="
exec flowctl train --config "$config" --resume auto --plain --ckpt-dir {root} --wandb-mode disabled --requeue-signal SIGUSR2
"""
    assert not isolated_run_root.exists()


def test_sweep_slurm_submits_one_array_and_records_each_task(tmp_path, isolated_run_root, monkeypatch):
    monkeypatch.setenv("PATH", f"{stand_in(tmp_path, 'sbatch', 'echo 977')}:/usr/bin:/bin")
    grid = sweep_grid(tmp_path)
    result = cli("sweep", grid, "--launcher", "slurm")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("submitted job array 977: 2 points of abl")
    args = (tmp_path / "sbatch.args").read_text().split()
    assert args[0] == "--parsable" and Path(args[1]).is_file()
    for index, flow in enumerate(("icfm", "otcfm")):
        folder = isolated_run_root / f"mlp-{flow}-vectors-640x2-none"
        assert (folder / "sweep.yaml").is_file()
        assert json.loads((folder / "sweep.json").read_text())["submitted"]["job"] == f"977_{index}"
    status = json.loads(cli("sweep", "status", grid, "--json").stdout)
    assert [p["detail"] for p in status["points"]] == [
        "submitted as Slurm job 977_0", "submitted as Slurm job 977_1"]
