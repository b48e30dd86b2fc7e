"""A user's own network and metric through every command, as a user runs them: real
`flowctl` processes started from a folder outside the repository, with
examples/custom_network on PYTHONPATH (issue 22's "must hold" list). Reference runs and a few
repeat commands run in-process with the package on sys.path instead (train, resume, sample,
eval, plot, sweep and a two-process train each run as a real process here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.helpers import (
    REPO_ROOT,
    TINY,
    assert_same_state,
    cli,
    get_json,
    load,
    metrics_rows,
    run_json,
    serve_root,
    vectors_file,
    wait_for,
)
from tests.support.trained_run import copy_run

EXAMPLE = REPO_ROOT / "examples" / "custom_network"
UNET = ["--network", "flow_nets.unet:UNet1d", "--network-args", '{"channels": 4, "levels": 1}',
        "--eval-fn", "flow_nets.metrics:moment_errors"]


def user_env(root: Path, *extra_paths: Path) -> dict[str, str]:
    """A shell's environment with the repository and the user's package on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    paths = [str(REPO_ROOT), str(EXAMPLE), *map(str, extra_paths)]
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "FLOWCTL_CKPT_DIR": str(root)}


def as_user(folder: Path, env: dict, *args: str, check: int | None = 0) -> subprocess.CompletedProcess:
    """`flowctl ARGS` as a fresh process started in `folder` with `env` (the user's shell)."""
    result = subprocess.run([sys.executable, "-m", "study.cli.app", *map(str, args)], cwd=folder,
                            env=env, capture_output=True, text=True, timeout=600)
    if check is not None:
        assert result.returncode == check, result.stderr[-3000:]
    return result


def start_as_user(folder: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "study.cli.app", *map(str, args)], cwd=folder,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


@pytest.mark.slow
def test_example_network_trains_resumes_exactly_samples_evaluates_and_plots(
        tmp_path, user_folder, isolated_run_root, monkeypatch):
    env = user_env(isolated_run_root)
    args = ["--dataset", vectors_file(tmp_path), "--epochs", "6", *TINY, *UNET,
            "--eval-every", "2", "--eval-samples", "100", "--tracker", "tensorboard"]
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the reference run "a", in-process
    assert cli("train", "--run-name", "a", *args).exit_code == 0
    process = start_as_user(user_folder, env, "train", "--run-name", "b", *args)
    wait_for((isolated_run_root / "b" / "last.pt").exists, process=process, what="b's last.pt")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert load(isolated_run_root / "b" / "last.pt")["global_step"] < \
        load(isolated_run_root / "a" / "last.pt")["global_step"]
    as_user(user_folder, env, "resume", "b")
    assert_same_state(load(isolated_run_root / "a" / "last.pt"), load(isolated_run_root / "b" / "last.pt"))
    assert metrics_rows(isolated_run_root / "b") == metrics_rows(isolated_run_root / "a")

    run = isolated_run_root / "b"
    config = load(run / "best.pt")["config"]
    assert config["network"] == "flow_nets.unet:UNet1d"
    assert config["network_args"] == {"channels": 4, "levels": 1}
    assert len(config["network_sha256"]) == 64
    assert run_json(run)["config"]["network_sha256"] == config["network_sha256"]
    rows = metrics_rows(run)
    assert [r["eval/mean_error"] != "" for r in rows].count(True) == 3  # epochs 2, 4, 6

    as_user(user_folder, env, "sample", "b", "--n", "50", "--steps", "4", "--out",
            user_folder / "x.pt")
    assert tuple(load(user_folder / "x.pt").shape) == (50, 2)
    as_user(user_folder, env, "eval", "b", "--n", "100", "--steps", "4", "--draws", "2")
    record = json.loads((run / "eval.json").read_text())
    assert {"mean_error", "mean_error_std", "std_error"} <= set(record)
    assert all("mean_error" in draw for draw in record["per_draw"])
    as_user(user_folder, env, "plot", "b")
    assert (run / "loss.png").is_file() and (run / "samples.png").is_file()
    slurm = cli("slurm", "submit", _config_file(tmp_path), "--dry-run")
    assert slurm.exit_code == 0 and "flowctl" in slurm.stdout and "train" in slurm.stdout

    # Without the package on the path: exit 2, one line naming the target and the fix.
    bare = {**env, "PYTHONPATH": str(REPO_ROOT)}
    missing = as_user(user_folder, bare, "sample", "b", "--n", "5", check=2)
    assert missing.stderr.count("\n") == 1 and "flow_nets.unet:UNet1d" in missing.stderr
    assert "PYTHONPATH" in missing.stderr


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "unet.yaml"
    path.write_text("network: {target: flow_nets.unet:UNet1d, args: {channels: 4}}\n"
                    "eval_fn: flow_nets.metrics:moment_errors\nepochs: 2\nrun_name: slurm-unet\n")
    return path


@pytest.mark.slow
def test_example_grid_sweeps_a_network_argument_and_trains_on_two_processes(
        tmp_path, user_folder, isolated_run_root):
    env = user_env(isolated_run_root)
    grid = user_folder / "grid.yaml"
    grid.write_text((EXAMPLE / "grid.yaml").read_text().replace("epochs: 5", "epochs: 1")
                    .replace("[8, 16]", "[2, 4]"))
    result = as_user(user_folder, env, "sweep", "run", grid, "--wandb-mode", "disabled")
    assert "2 points: 2 finished" in result.stdout, result.stdout
    names = sorted(p.name for p in isolated_run_root.iterdir())
    assert names == ["unet1d-icfm-moons-none-channels2", "unet1d-icfm-moons-none-channels4"]
    assert load(isolated_run_root / names[1] / "best.pt")["config"]["network_args"]["channels"] == 4
    assert "eval/mean_error" in metrics_rows(isolated_run_root / names[0])[0]
    # On two processes, with the settings as key=value words (as Hydra users type them):
    # torchrun re-runs the command in each worker, and the words must reach them as flags do.
    as_user(user_folder, env, "train", "network=flow_nets.unet:UNet1d", "network.args.channels=4",
            "network.args.levels=1", "epochs=2", "ema_decay=0.99", "--run-name", "ddp",
            "--dataset", vectors_file(tmp_path), *TINY, "--nproc", "2")
    checkpoint = load(isolated_run_root / "ddp" / "last.pt")
    config = checkpoint["config"]
    assert checkpoint["world_size"] == 2 and checkpoint["epoch"] == 1
    assert (config["network"], config["network_args"], config["ema_decay"]) == (
        "flow_nets.unet:UNet1d", {"channels": 4, "levels": 1}, 0.99)


@pytest.mark.slow  # one real process; the other targets in-process (the same check, faster)
def test_hostile_targets_exit_2_and_call_nothing(tmp_path, user_folder, isolated_run_root):
    env = user_env(isolated_run_root)
    marker = tmp_path / "called"
    args = ["--network-args", json.dumps({"command": f"touch {marker}"}), "--epochs", "1", *TINY]
    result = as_user(user_folder, env, "train", "--network", "os:system", *args, check=2)
    assert result.stderr.count("\n") == 1 and "os:system" in result.stderr, result.stderr
    for target in ("builtins:eval", "no_such_pkg_zz.nets:Net", "collections:OrderedDict"):
        result = cli("train", "--network", target, *args)
        assert result.exit_code == 2, result.stderr
        assert result.stderr.count("\n") == 1 and target in result.stderr, result.stderr
    result = cli("train", "--eval-fn", "os:system", "--epochs", "1")
    assert result.exit_code == 2 and "not a plain Python function" in result.stderr
    assert not marker.exists() and not any(isolated_run_root.glob("*/*.pt"))


@pytest.mark.slow  # real processes, 5-10 s: the default suite runs it, test-fast does not
def test_list_inspect_and_the_dashboard_never_import_a_runs_target(
        tmp_path, user_folder, isolated_run_root, trained_run):
    """A run whose checkpoint and run.json name a module that writes a marker when
    imported: the commands that list or inspect runs must not import it."""
    package = tmp_path / "evil"
    package.mkdir()
    marker = tmp_path / "imported"
    (package / "evilnet.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = user_env(isolated_run_root, package)
    run = copy_run(trained_run, isolated_run_root)  # the session's finished run, as "tiny"
    for name in ("best.pt", "last.pt"):
        _retarget(run / name, "evilnet:Net")
    status = run_json(run)
    status["config"]["network"] = "evilnet:Net"
    (run / "run.json").write_text(json.dumps(status))

    assert "tiny" in as_user(user_folder, env, "list-runs").stdout
    assert "evilnet:Net" in as_user(user_folder, env, "inspect-ckpt", "tiny").stdout
    as_user(user_folder, env, "list-runs", "--json")
    with serve_root(isolated_run_root) as served:
        assert get_json(f"{served}/api/runs/tiny")["run"]["run_name"] == "tiny"
    assert not marker.exists()
    # A command that builds the model does import it, and refuses what it finds.
    refused = as_user(user_folder, env, "sample", "tiny", "--n", "5", check=2)
    assert marker.exists() and "no 'Net'" in refused.stderr


def _retarget(path: Path, target: str) -> None:
    import torch

    payload = load(path)
    payload["config"]["network"] = target
    torch.save(payload, path)


SCRIPT = """
import sys, torch
sys.path.insert(0, {example!r})
from study.flow_matching.config import TrainingConfig
from study.flow_matching.trainer import FlowTrainer
from flow_nets.unet import UNet1d

class ScriptNet(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = torch.nn.Linear(dim + 1, dim)
    def forward(self, x, t):
        return self.net(torch.cat([x, t.expand(x.shape[0])[:, None]], 1))

torch.manual_seed(0)
data = torch.randn(640, 2)
for name, model in (("api-unet", UNet1d(2, channels=4, levels=1)), ("api-script", ScriptNet(2))):
    config = TrainingConfig(arch=name, run_name=name, epochs=1, batch_size=64,
                            network_args={{"channels": 4, "levels": 1}} if name == "api-unet" else {{}})
    FlowTrainer(model, config, data[:576], data[576:], "cpu", wandb_mode="disabled").train()
"""


@pytest.mark.slow  # real processes, 5-10 s: the default suite runs it, test-fast does not
def test_python_api_runs_are_sampled_by_the_cli_or_get_the_way_forward(
        tmp_path, user_folder, isolated_run_root, monkeypatch):
    env = user_env(isolated_run_root)
    script = user_folder / "train_mine.py"
    script.write_text(SCRIPT.format(example=str(EXAMPLE)))
    result = subprocess.run([sys.executable, str(script)], cwd=user_folder, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load(isolated_run_root / "api-unet" / "best.pt")["config"]["network"] == \
        "flow_nets.unet:UNet1d"
    as_user(user_folder, env, "sample", "api-unet", "--n", "20", "--steps", "2")
    refused = as_user(user_folder, env, "sample", "api-script", "--n", "20", check=2)
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "__main__:ScriptNet" in refused.stderr and "move ScriptNet into a module" in refused.stderr
    assert "study.load_run('api-script', model=ScriptNet(...))" in refused.stderr

    # ... and from Python, with the class at hand, the run is usable.
    code = textwrap.dedent(f"""
        import sys, torch, study
        exec(open({str(script)!r}).read().split("torch.manual_seed")[0])
        run = study.load_run("api-script", model=ScriptNet(2))
        x = run.sample(30, steps=2, seed=1)
        assert x.shape == (30, 2) and not run.model().training
        assert run.rows and run.status["status"] == "finished"
        print(study.load_run("api-unet").evaluate(n=50, steps=2, draws=2)["w2"])
        print(" ".join(row["run_name"] for row in study.list_runs()))
    """)
    api = subprocess.run([sys.executable, "-c", code], cwd=user_folder, env=env,
                         capture_output=True, text=True, timeout=300)
    assert api.returncode == 0, api.stderr[-3000:]
    w2, names = api.stdout.strip().splitlines()[-2:]
    listed = json.loads(as_user(user_folder, env, "list-runs", "--json").stdout)
    assert names.split() == [row["run_name"] for row in listed]
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the CLI's eval in-process: the same number
    cli_eval = cli("eval", "api-unet", "--n", "50", "--steps", "2", "--draws", "2", "--json")
    assert cli_eval.exit_code == 0 and float(w2) == json.loads(cli_eval.stdout)["w2"]


@pytest.mark.slow
def test_stage_losses_and_a_user_metric_reach_every_tracker_across_a_resume(
        tmp_path, isolated_run_root, monkeypatch):
    """Two stages (each logs train/loss/{stage}) and an eval_fn: every metrics.csv key is
    in TensorBoard, MLflow and wandb at the same steps, after a resume into stage two."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from study.runs.metrics_log import read_metrics
    from tests.support.helpers import wandb_files, wandb_history
    from tests.support.trackers import history, mlflow_run

    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tmp_path / "stages.yaml"
    config.write_text("stages: [{name: warm, epochs: 2}, {name: fine, epochs: 2, lr: 0.001}]\n"
                      "eval_fn: flow_nets.metrics:moment_errors\n")
    flags = [*TINY, "--dataset", vectors_file(tmp_path), "--config", config, "--log-every", "4",
             "--eval-every", "1", "--eval-samples", "64", "--tracker", "wandb,mlflow,tensorboard"]
    flags[flags.index("--wandb-mode") + 1] = "offline"
    assert cli("train", "--run-name", "st", "--epochs", "2", *flags).exit_code == 0
    result = cli("resume", "st", "--epochs", "4")
    assert result.exit_code == 0, result.stderr
    run = isolated_run_root / "st"
    rows = read_metrics(run / "metrics.csv")
    columns = list(rows[0])
    for key in ("train/loss/warm", "train/loss/fine", "eval/mean_error", "eval/std_error"):
        assert key in columns, columns
    warm = [int(r["step"]) for r in rows if r["train/loss/warm"]]
    fine = [int(r["step"]) for r in rows if r["train/loss/fine"]]
    assert warm and fine and max(warm) < min(fine)

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    client, mlflow = mlflow_run(run)
    logged: dict[str, dict[int, float]] = {}
    for path in wandb_files(run):
        for step, items in wandb_history(path):
            for key, value in items.items():
                if isinstance(value, (int, float)):
                    logged.setdefault(key, {})[step] = value
    for key in ("train/loss/warm", "train/loss/fine", "eval/mean_error", "eval/std_error",
                "train/loss", "eval/w2"):
        expected = [(int(r["step"]), float(r[key])) for r in rows if r[key] != ""]
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(key)] == expected, key
        assert history(client, mlflow, key) == expected, key
        assert sorted(logged[key].items()) == expected, key


@pytest.mark.slow
def test_a_dataset_function_is_recorded_and_called_again_by_resume_and_eval(
        user_folder, isolated_run_root, monkeypatch):
    env = user_env(isolated_run_root)
    flags = ["--dataset", "flow_nets.data:smooth_signals", "--dataset-args",
             '{"rows": 640, "dim": 8}', *TINY, *UNET[:4]]
    as_user(user_folder, env, "train", "--run-name", "sig", "--epochs", "2", *flags)
    run = isolated_run_root / "sig"
    config = load(run / "last.pt")["config"]
    assert config["dataset_args"] == {"rows": 640, "dim": 8}
    # Resume and eval in-process (a real process per command is the test above): each calls
    # the recorded function again, from the package on the path.
    monkeypatch.syspath_prepend(str(EXAMPLE))
    resumed = cli("resume", "sig", "--epochs", "3")
    assert resumed.exit_code == 0 and "dataset changed" not in resumed.stderr, resumed.stderr
    assert load(run / "last.pt")["epoch"] == 2
    evaluated = cli("eval", "sig", "--n", "50", "--steps", "2", "--draws", "1")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert "test split of flow_nets.data:smooth_signals" in json.loads((run / "eval.json").read_text())["data"]
