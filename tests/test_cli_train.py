"""flowctl train (and the app's help) through the real Typer app, in-process."""

from __future__ import annotations

import pytest
import yaml

from tests.support.helpers import (
    TINY,
    cli,
    error_line,
    load,
    run_json,
    vectors_file,
)


def test_app_help_lists_every_command():
    out = cli("--help").stdout
    for name in ("train", "resume", "inspect-ckpt", "list-runs"):
        assert name in out


def test_train_writes_checkpoints_logs_and_summary(tmp_path, isolated_run_root):
    data = vectors_file(tmp_path)
    result = cli("train", "--dataset", data, "--epochs", "2", "--run-name", "r1", *TINY)
    assert result.exit_code == 0, result.stderr
    run = isolated_run_root / "r1"
    assert {p.name for p in run.iterdir()} >= {"best.pt", "last.pt", "run.json", "metrics.csv"}
    assert "best val loss" in result.stdout and str(run / "best.pt") in result.stdout
    assert run_json(run)["status"] == "finished"
    assert load(run / "last.pt")["epoch"] == 1


def test_default_run_name_and_yaml_config_with_flag_override(tmp_path, isolated_run_root):
    data = vectors_file(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"dataset": str(data), "epochs": 1, "flow": "otcfm",
                                      "arch": "resmlp", "log_every": 3}))
    result = cli("train", "--config", config, "--epochs", "2", *TINY)
    assert result.exit_code == 0, result.stderr
    name = f"resmlp-otcfm-{data.stem}-none"  # a path dataset contributes its file name
    saved = load(isolated_run_root / name / "best.pt")["config"]
    assert saved["epochs"] == 2 and saved["flow"] == "otcfm" and saved["log_every"] == 3


def test_existing_run_needs_resume_or_overwrite(tmp_path, isolated_run_root):
    data = vectors_file(tmp_path)
    args = ["train", "--dataset", data, "--epochs", "1", "--run-name", "again", *TINY]
    assert cli(*args).exit_code == 0
    refused = cli(*args)
    assert refused.exit_code == 2
    assert "flowctl resume again" in refused.stderr and "--overwrite" in refused.stderr
    assert cli(*args, "--overwrite").exit_code == 0


@pytest.mark.parametrize("flags, fragment", [
    (["--flow", "nope"], "unknown flow 'nope'; choose one of: icfm, otcfm"),
    (["--network", "cnn"], "unknown network 'cnn'; choose one of: mlp, resmlp"),
    (["--aug", "rotate"], "unknown aug 'rotate'"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--dataset", "no-such-data"], "unknown dataset 'no-such-data'"),
    (["--batch-size", "4096"], "fewer than one batch"),
    (["--wandb-mode", "sometimes"], "unknown --wandb-mode 'sometimes'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--requeue-signal", "SIGNOPE"], "unknown or uncatchable signal"),
    (["--scheduler", "exp"], "unknown scheduler 'exp'; choose one of: cosine, linear, step"),
    (["--final-lr-scale", "2"], "scheduler.final_lr_scale must be in [0, 1]"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    (["--grad-accum", "3"], "batch_size 64 is not a multiple of grad_accum 3"),
    (["--select-by", "eval_w2"], "--select-by eval_w2 needs evaluations: pass --eval-every"),
    (["--normalize", "minmax"], "unknown normalize 'minmax'; choose one of: none, standard"),
    (["--keep-snapshots", "-1"], "keep_snapshots must be >= 0"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, flags, fragment):
    data = vectors_file(tmp_path)
    result = cli("train", "--dataset", data, "--epochs", "1", *TINY, *flags)
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("content, fragment", [
    ("epochs: 1\nlearning_rate: 0.1\n", "unknown key 'learning_rate'"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("epochs: [1\n", "not valid YAML"),
    ("epochs: ten\n", "epochs must be a int"),
])
def test_bad_config_file_is_one_line_exit_2(tmp_path, content, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    result = cli("train", "--config", config, *TINY)
    error_line(result, fragment)


def test_write_failure_is_exit_1_and_marks_the_run_failed(tmp_path, isolated_run_root):
    """A real OSError: last.pt's path is a folder, so os.replace onto it fails."""
    data = vectors_file(tmp_path)
    (isolated_run_root / "blocked" / "last.pt").mkdir(parents=True)
    result = cli("train", "--dataset", data, "--epochs", "1", "--run-name", "blocked", *TINY)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "while writing last.pt" in errors[0]
    assert "Traceback" not in result.stderr
    status = run_json(isolated_run_root / "blocked")
    assert status["status"] == "failed" and "last.pt" in status["error"]["message"]
    assert not list((isolated_run_root / "blocked").glob(".*tmp*")), "temp file left behind"


def test_run_json_names_the_data_files_with_their_checksums(tmp_path, isolated_run_root):
    import hashlib

    data = vectors_file(tmp_path)
    result = cli("train", "--dataset", data, "--epochs", "1", "--run-name", "files", *TINY)
    assert result.exit_code == 0, result.stderr
    dataset = run_json(isolated_run_root / "files")["dataset"]
    assert dataset["files"] == {data.name: hashlib.sha256(data.read_bytes()).hexdigest()}
    assert dataset["rows"] == {"train": 576, "val": 64}
