"""--tracker: which trackers a run logs to, on train and on resume, and the bad-input lines."""

from __future__ import annotations

import pytest

from study.errors import UsageError
from study.runs.tracking import choose_trackers, parse_tracker_option, without_credentials
from tests.support.helpers import cli, error_line, run_flags, run_json, vectors_file, wandb_files

TRACKER_FILES = ("wandb", "mlruns", "tb")


def offline(flags: list[str]) -> list[str]:
    """run_flags with wandb offline instead of disabled: wandb would write if chosen."""
    flags = list(flags)
    flags[flags.index("--wandb-mode") + 1] = "offline"
    return flags


@pytest.mark.parametrize(("values", "expected"), [
    (None, None), ([], None), (["none"], ()), (["mlflow"], ("mlflow",)),
    (["tensorboard,wandb"], ("wandb", "tensorboard")),
    (["MLflow", "wandb, tensorboard"], ("wandb", "mlflow", "tensorboard")),
])
def test_tracker_option_accepts_repeats_and_commas(values, expected):
    assert parse_tracker_option(values) == expected


@pytest.mark.parametrize(("values", "tensorboard", "fragment"), [
    (["comet"], False, "unknown --tracker 'comet'; choose from: wandb, mlflow, tensorboard, none"),
    ([","], False, "unknown --tracker ''"),
    (["none,wandb"], False, "--tracker none means local files only"),
    (["none"], True, "drop it, or drop the other trackers and --tensorboard"),
])
def test_tracker_option_rejects_bad_names(values, tensorboard, fragment):
    with pytest.raises(UsageError) as caught:
        parse_tracker_option(values, tensorboard=tensorboard)
    assert fragment in str(caught.value)


def test_choose_trackers_defaults_follow_the_run(tmp_path):
    fresh = choose_trackers(None, tensorboard=False, previous={}, run_dir=tmp_path)
    assert fresh == ("wandb",)
    assert choose_trackers(None, tensorboard=True, previous={}, run_dir=tmp_path) == (
        "wandb", "tensorboard")
    (tmp_path / "tb").mkdir()
    assert choose_trackers(None, tensorboard=False, previous={"mlflow_run_id": "abc"},
                           run_dir=tmp_path) == ("wandb", "mlflow", "tensorboard")
    # A resume keeps what run.json lists, even none; an explicit choice is exactly that.
    assert choose_trackers(None, tensorboard=False, previous={"trackers": {}}, run_dir=tmp_path) == ()
    assert choose_trackers(None, tensorboard=False, previous={"trackers": {"mlflow": "ok"}},
                           run_dir=tmp_path) == ("mlflow",)
    assert choose_trackers(("wandb",), tensorboard=False, previous={"trackers": {"mlflow": "ok"}},
                           run_dir=tmp_path) == ("wandb",)


def test_credentials_never_reach_run_json():
    assert without_credentials("https://me:s3cret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    assert without_credentials("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"


def test_unknown_tracker_on_the_cli_is_one_line_exit_2(tmp_path, isolated_run_root):
    result = cli("train", "--run-name", "x", *run_flags(vectors_file(tmp_path)), "--tracker", "comet")
    error_line(result, "unknown --tracker 'comet'", "wandb, mlflow, tensorboard, none")
    assert not (isolated_run_root / "x").exists(), "rejected before anything is written"
    result = cli("resume", "x", "--tracker", "none,mlflow")
    error_line(result, "--tracker none means local files only")


def test_tracker_none_writes_only_local_files_and_resume_keeps_it(tmp_path, isolated_run_root):
    flags = offline(run_flags(vectors_file(tmp_path), epochs=1))
    result = cli("train", "--run-name", "quiet", *flags, "--tracker", "none")
    assert result.exit_code == 0, result.stderr
    run_dir = isolated_run_root / "quiet"
    assert not any((run_dir / name).exists() for name in TRACKER_FILES)
    status = run_json(run_dir)
    assert status["trackers"] == {} and status["wandb"] == "disabled"
    assert status["wandb_run_id"] is None and status["mlflow_run_id"] is None
    result = cli("resume", "quiet", "--epochs", "2", "--wandb-mode", "offline")
    assert result.exit_code == 0, result.stderr
    assert not any((run_dir / name).exists() for name in TRACKER_FILES), "no flag repeated"
    assert run_json(run_dir)["trackers"] == {}


def test_wandb_and_tensorboard_chosen_together(tmp_path, isolated_run_root):
    flags = offline(run_flags(vectors_file(tmp_path), epochs=1))
    result = cli("train", "--run-name", "both", *flags, "--tracker", "tensorboard",
                 "--tracker", "wandb")
    assert result.exit_code == 0, result.stderr
    run_dir = isolated_run_root / "both"
    assert len(wandb_files(run_dir)) == 1 and any((run_dir / "tb").iterdir())
    status = run_json(run_dir)
    assert status["trackers"] == {"wandb": "ok", "tensorboard": "ok"}
    assert status["wandb_run_id"] and status["wandb_mode"] == "offline"
    assert not (run_dir / "mlruns").exists()


def test_default_is_wandb_as_before(tmp_path, isolated_run_root):
    flags = offline(run_flags(vectors_file(tmp_path), epochs=1))
    assert cli("train", "--run-name", "plain", *flags).exit_code == 0
    run_dir = isolated_run_root / "plain"
    assert len(wandb_files(run_dir)) == 1 and not (run_dir / "tb").exists()
    assert run_json(run_dir)["trackers"] == {"wandb": "ok"}
