"""Secrets: a config value shaped like a credential is shown as [SECRET] everywhere flowctl
prints or stores it for people (console, run.json, wandb, list-runs, inspect-ckpt), and
$WANDB_API_KEY's value is written to no file of the run, wandb's own files included.

One real run (offline wandb, a fake API key in the environment) serves every test here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.helpers import TINY, cli, run_json, vectors_file, wandb_files, wandb_records

GROUP = "ghp_abcdefghijklmnopqrstuvwxyz0123"  # a GitHub token's shape, passed as --group
API_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"  # 40 hex digits, like a real wandb key
OFFLINE = [a for a in TINY if a not in ("--wandb-mode", "disabled")] + ["--wandb-mode", "offline"]


@pytest.fixture(scope="module")
def secret_run(zygote, tmp_path_factory) -> tuple[Path, str]:
    """(run folder, console output) of a 2-epoch offline run with --group GROUP."""
    folder = tmp_path_factory.mktemp("secret-run")
    data = vectors_file(folder)
    env = {**os.environ, "FLOWCTL_CKPT_DIR": str(folder / "root"), "WANDB_API_KEY": API_KEY}
    child = zygote.run("train", "--run-name", "s", "--dataset", data, "--epochs", "2",
                       "--group", GROUP, *OFFLINE, env=env)
    assert child.wait(120) == 0, child.stderr
    return folder / "root" / "s", child.stdout + child.stderr


def test_console_output_never_shows_the_secret(secret_run):
    run, console = secret_run
    assert "run s: finished" in console
    assert GROUP not in console and API_KEY not in console


def test_run_json_masks_the_secret_in_the_config(secret_run):
    run, _ = secret_run
    assert run_json(run)["config"]["group"] == "[SECRET]"


def test_run_json_holds_the_secret_nowhere(secret_run):
    run, _ = secret_run
    assert GROUP not in (run / "run.json").read_text()


def wandb_run_records(run: Path) -> list:
    return [r.run for path in wandb_files(run) for r in wandb_records(path)
            if r.WhichOneof("record_type") == "run"]


def test_wandb_config_masks_the_secret(secret_run):
    run, _ = secret_run
    records = wandb_run_records(run)
    assert records
    for record in records:
        config = {item.key: json.loads(item.value_json) for item in record.config.update}
        assert config["group"] == "[SECRET]"


def test_wandb_run_group_masks_the_secret(secret_run):
    run, _ = secret_run
    assert all(GROUP not in record.run_group for record in wandb_run_records(run))


def test_list_runs_never_shows_the_secret(secret_run):
    run, _ = secret_run
    for args in (["--json"], []):
        result = cli("list-runs", "--ckpt-dir", run.parent, *args)
        assert result.exit_code == 0 and "s" in result.stdout
        assert GROUP not in result.stdout


def test_inspect_ckpt_masks_the_secret(secret_run):
    run, _ = secret_run
    for args in (["--json"], []):
        result = cli("inspect-ckpt", run, *args)
        assert result.exit_code == 0, result.stderr
        assert "[SECRET]" in result.stdout and GROUP not in result.stdout


def test_wandb_api_key_is_written_to_no_file(secret_run):
    run, _ = secret_run
    files = [path for path in run.rglob("*") if path.is_file()]
    assert any("wandb" in path.parts for path in files), "expected wandb's offline files"
    leaking = [str(path.relative_to(run)) for path in files if API_KEY.encode() in path.read_bytes()]
    assert leaking == []


def test_resume_override_line_masks_the_secret(tmp_path, isolated_run_root, secret_run):
    run, _ = secret_run
    copy = isolated_run_root / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("wandb"))
    other = "ghp_zyxwvutsrqponmlkjihgfedcba9876"
    result = cli("train", "--resume", copy / "last.pt", "--epochs", "3", "--group", other,
                 "--wandb-mode", "disabled")
    assert result.exit_code == 0, result.stderr
    assert "group: [SECRET] (flag) wins over [SECRET] (checkpoint)" in result.stderr
    assert other not in result.stderr + result.stdout and GROUP not in result.stderr


# -- credentials inside longer text: only the token is masked, the rest stays readable --------
AWS_SESSION = "ASIA" + "QWERTYUIOP234567"
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"


def test_console_error_line_masks_a_key_inside_text():
    result = cli("inspect-ckpt", f"my key is {GOOGLE}")
    assert result.exit_code == 2
    assert GOOGLE not in result.stderr and "my key is [SECRET]" in result.stderr


@pytest.fixture
def leaky_run(isolated_run_root) -> Path:
    """A run whose model fails at step 3 with an error that quotes a credential."""
    import torch

    from study.flow_matching.config import TrainingConfig
    from study.flow_matching.trainer import FlowTrainer
    from tests.support.helpers import LinearVelocity

    def leak_at_step_3(call, out):
        if call == 3:
            raise RuntimeError(f"upload refused for key {AWS_SESSION} (simulated by the test)")
        return out

    config = TrainingConfig(arch="test", epochs=1, batch_size=64, run_name="leaky")
    x = torch.randn(640, 2, generator=torch.Generator().manual_seed(0))
    trainer = FlowTrainer(LinearVelocity(leak_at_step_3), config, x[:512], x[512:], "cpu",
                          wandb_mode="offline")
    with pytest.raises(RuntimeError):
        trainer.train()
    return isolated_run_root / "leaky"


def test_failed_run_json_keeps_the_error_without_the_key(leaky_run):
    error = run_json(leaky_run)["error"]
    assert error["message"] == "upload refused for key [SECRET] (simulated by the test)"
    assert AWS_SESSION not in (leaky_run / "run.json").read_text()


def test_failed_run_wandb_notes_keep_the_error_without_the_key(leaky_run):
    notes = [record.notes for record in wandb_run_records(leaky_run) if record.notes]
    assert notes, "expected the error in wandb's notes"
    assert all(AWS_SESSION not in note and "[SECRET]" in note for note in notes), notes


def write_run_json(root: Path, name: str, **fields) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_name": name, "status": "failed", **fields}))
    return run


def test_list_runs_masks_keys_in_run_json_written_without_masking(isolated_run_root):
    """A run.json from an older flowctl (or DISABLE_SECRET_FILTER=1): masked when shown."""
    write_run_json(isolated_run_root, "old", group=f"team {AWS_SESSION}",
                   error={"type": "RuntimeError", "message": f"bad key {GOOGLE}"})
    for args in (["--json"], []):
        result = cli("list-runs", *args)
        assert result.exit_code == 0, result.stderr
        assert AWS_SESSION not in result.stdout and GOOGLE not in result.stdout
        assert "team [SECRET]" in result.stdout and "bad key [SECRET]" in result.stdout


def test_inspect_ckpt_masks_a_key_inside_a_config_value(isolated_run_root):
    import torch

    path = isolated_run_root / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model_state_dict": {"weight": torch.zeros(2)}, "epoch": 0,
                "config": {"notes": f"shared with {AWS_SESSION} today"}}, path)
    for args in (["--json"], []):
        result = cli("inspect-ckpt", path, "--no-tensors", *args)
        assert result.exit_code == 0, result.stderr
        assert AWS_SESSION not in result.stdout and "shared with [SECRET] today" in result.stdout


def test_disable_secret_filter_shows_values_with_one_warning(isolated_run_root):
    """The switch works in a real process: list-runs shows the raw value, warns once."""
    from tests.support.helpers import spawn

    write_run_json(isolated_run_root, "a", group=AWS_SESSION)
    write_run_json(isolated_run_root, "b", group=GOOGLE)
    child = spawn("list-runs", "--json", env={"DISABLE_SECRET_FILTER": "1"})
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert {run["group"] for run in json.loads(out)} == {AWS_SESSION, GOOGLE}
    assert [line for line in err.splitlines() if line.strip()] == [
        "warning: DISABLE_SECRET_FILTER is set: credentials are shown and stored unmasked"]
