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

from tests.helpers import TINY, cli, run_json, vectors_file, wandb_files, wandb_records

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
