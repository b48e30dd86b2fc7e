"""Bad input: every command that opens a checkpoint, and `train`'s config and data, answer a
broken or hostile file with exit 2 and exactly one `error: ` line that names the file (or
key) and the problem; never a traceback, and never code from the file."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.helpers import TINY, CreatesMarker, cli, error_line, load, vectors_file

COMMANDS = {
    "inspect-ckpt": lambda path: ["inspect-ckpt", path],
    # A resume writes into the folder that holds its checkpoint, which must be under the root.
    "resume": lambda path: ["resume", path, "--epochs", "2", "--wandb-mode", "disabled",
                            "--ckpt-dir", Path(path).parent.parent],
    "train --resume": lambda path: ["train", "--resume", path, "--epochs", "2",
                                      "--wandb-mode", "disabled", "--ckpt-dir", Path(path).parent.parent],
    "sample": lambda path: ["sample", path, "--n", "10", "--out", Path(path).with_suffix(".out.pt")],
    "eval": lambda path: ["eval", path, "--n", "10", "--steps", "2"],
}



# -- checkpoints -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_runs(trained_run, tmp_path_factory) -> dict[str, Path]:
    """Two finished runs: `narrow` (width 16: the session's trained run, read only) and
    `wide` (width 32, 1 epoch, trained here)."""
    folder = tmp_path_factory.mktemp("source-runs")
    result = cli("train", "--ckpt-dir", folder / "root", "--run-name", "wide", "--dataset",
                 vectors_file(folder), "--epochs", "1", *TINY, "--width", "32")
    assert result.exit_code == 0, result.stderr
    return {"narrow": trained_run, "wide": folder / "root" / "wide"}


def make_bad_checkpoint(kind: str, folder: Path, runs: dict[str, Path], marker: Path) -> Path:
    good = runs["narrow"] / "last.pt"
    path = folder / f"{kind}.pt"
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random-bytes":
        path.write_bytes(random.Random(7).randbytes(4096))
    elif kind == "json":
        path.write_text('{"model_state_dict": {}, "epoch": 3}\n')
    elif kind == "torch-not-flowctl":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "torch-tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "newer-format":
        ckpt = load(good)
        ckpt["format_version"] = 99
        torch.save(ckpt, path)
    elif kind == "wrong-shapes":  # the config says width 16, the tensors are width 32
        ckpt = load(runs["wide"] / "last.pt")
        ckpt["config"]["width"] = 16
        torch.save(ckpt, path)
    elif kind == "pickle-reduce":
        path.write_bytes(pickle.dumps({"model_state_dict": CreatesMarker(marker)}))
    elif kind == "torch-reduce":
        torch.save({"model_state_dict": {}, "payload": CreatesMarker(marker)}, path)
    elif kind == "torch-legacy-reduce":
        torch.save({"model_state_dict": {}, "payload": CreatesMarker(marker)}, path,
                   _use_new_zipfile_serialization=False)
    else:
        raise AssertionError(kind)
    return path


CHECKPOINT_CASES = {  # kind -> what the error line says (beside the file's path)
    "missing": None,  # "does not exist" / "no checkpoint or run named": see below
    "empty": "is empty (0 bytes)",
    "truncated": "is not a torch checkpoint (truncated or corrupt)",
    "random-bytes": "is not a torch checkpoint",
    "json": "is a JSON file, not a torch checkpoint",
    "torch-not-flowctl": "is not a flowctl checkpoint (it holds a dict without model_state_dict)",
    "torch-tensor": "is not a flowctl checkpoint (it holds a Tensor)",
    "newer-format": "was written by a newer flowctl (format 99 > 1)",
    "wrong-shapes": ("fit", "size mismatch"),  # "does not fit the model" / "do not fit a mlp model"
    "pickle-reduce": "is a plain pickle, not a torch checkpoint (refusing to unpickle it)",
    "torch-reduce": "the file needs arbitrary code to unpickle",
    "torch-legacy-reduce": "the file needs arbitrary code to unpickle",
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(CHECKPOINT_CASES))
def test_bad_checkpoint_is_one_line_exit_2(tmp_path, source_runs, command, kind):
    marker = tmp_path / "pwned"
    path = make_bad_checkpoint(kind, tmp_path, source_runs, marker)
    if kind == "wrong-shapes" and command == "inspect-ckpt":
        # inspect-ckpt describes the file without building a model: it shows the shapes.
        result = cli(*COMMANDS[command](path), "--json")
        assert result.exit_code == 0, result.stderr
        assert '"shape": [\n        32' in result.stdout
        return
    result = cli(*COMMANDS[command](path))
    line = error_line(result, str(path))
    expected = CHECKPOINT_CASES[kind]
    if kind == "missing":
        assert "does not exist" in line or "no checkpoint or run named" in line, line
    else:
        for fragment in (expected,) if isinstance(expected, str) else expected:
            assert fragment in line, line
    assert not marker.exists(), "the checkpoint ran code"


def test_hostile_pickle_as_a_run_folders_last_pt_is_refused_everywhere(
        tmp_path, isolated_run_root):
    """The same payload where the commands look on their own: {root}/{run}/last.pt."""
    marker = tmp_path / "pwned"
    run = isolated_run_root / "hostile"
    run.mkdir(parents=True)
    torch.save({"model_state_dict": {}, "payload": CreatesMarker(marker)}, run / "last.pt")
    (run / "best.pt").write_bytes(pickle.dumps(CreatesMarker(marker)))
    for args in (["inspect-ckpt", "hostile"], ["inspect-ckpt", "hostile", "--last"],
                 ["resume", "hostile"], ["train", "--resume", str(run)],
                 ["sample", "hostile", "--n", "10"], ["sample", "hostile", "--last", "--n", "10"],
                 ["eval", "hostile", "--n", "10"]):
        result = cli(*args)
        error_line(result, "hostile/")
    assert not marker.exists()
    assert cli("list-runs", "--json").exit_code == 0  # reads run.json only: still fine
    assert not marker.exists()


# -- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, fragment", [
    (["--activation", "swish"], "unknown activation 'swish'"),
    (["--source", "nowhere"], "unknown source 'nowhere'"),
    (["--network", "transformer"], "unknown network 'transformer'"),
    (["--width", "0"], "width must be a positive integer, got 0"),
    (["--depth", "-1"], "depth must be a positive integer, got -1"),
    (["--batch-size", "-3"], "batch_size must be a positive integer, got -3"),
    (["--log-every", "0"], "log_every must be a positive integer, got 0"),
    (["--save-every", "-1"], "save_every must be >= 0, got -1"),
    (["--warmup-steps", "-5"], "warmup_steps must be >= 0, got -5"),
    (["--sigma", "-0.1"], "sigma must be >= 0, got -0.1"),
    (["--ema-decay", "1"], "ema_decay must be in [0, 1), got 1.0"),
    (["--val-fraction", "0"], "val_fraction must be in (0, 1), got 0.0"),
    (["--lr", "0"], "lr must be > 0, got 0.0"),
])
def test_bad_flag_value_is_one_line_exit_2(tmp_path, isolated_run_root, flags, fragment):
    result = cli("train", "--dataset", vectors_file(tmp_path), "--epochs", "1", *TINY, *flags)
    error_line(result, fragment)
    assert not any(isolated_run_root.rglob("*.pt"))


@pytest.mark.parametrize("content, fragment", [
    ("width: wide\n", "width must be a int, got 'wide' (str)"),
    ("lr: fast\n", "lr must be a float, got 'fast' (str)"),
    ("epochs: 1.5\n", "epochs must be a int, got 1.5 (float)"),
    ("batch_size: true\n", "batch_size must be a int, got True (bool)"),
    ("group: 7\n", "group must be a str, got 7 (int)"),
    ("epochs: -2\n", "epochs must be a positive integer, got -2"),
    ("optimizer: sgd\n", "unknown key 'optimizer'"),
    ("stages: 3\n", "stages must be a list of mappings"),
    ("stages: [{name: a}]\n", "each stage needs 'name' and 'epochs'"),
    ("stages: [{name: a, epochs: 1, momentum: 0.9}]\n", "unknown stage key 'momentum'"),
    ("stages: [{name: a, epochs: 0}]\n", "stage 'a': epochs must be positive, got 0"),
    ("- epochs: 1\n", "must be a mapping of key: value, got list"),
    ("just words\n", "must be a mapping of key: value, got str"),
    ("42\n", "must be a mapping of key: value, got int"),
])
def test_bad_yaml_config_is_one_line_exit_2(tmp_path, content, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    # No TINY: its --width and --batch-size would override (and so hide) the file's values.
    result = cli("train", "--config", config, "--dataset", vectors_file(tmp_path),
                 "--wandb-mode", "disabled", "--plain")
    line = error_line(result, fragment)
    if fragment.startswith("unknown key") or "mapping of" in fragment:
        assert str(config) in line


@pytest.mark.parametrize("name", ["../outside", "a/b"])
def test_run_name_must_be_one_folder_under_the_root(tmp_path, isolated_run_root, name):
    result = cli("train", "--dataset", vectors_file(tmp_path), "--epochs", "1", "--run-name",
                 name, *TINY)
    error_line(result, "run")
    assert not [p for p in isolated_run_root.parent.rglob("*.pt") if p.name in ("best.pt", "last.pt")]


# -- data --------------------------------------------------------------------------------------
def write_data(kind: str, folder: Path) -> tuple[Path, str]:
    """A broken data file and what its error line must say."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(640, 2, generator=generator)
    if kind == "nan-pt":
        x[17, 1] = float("nan")
        path, fragment = folder / "nan.pt", "row 17 holds NaN, Inf or a number beyond float32"
        torch.save(x, path)
    elif kind == "inf-npy":
        x[3, 0] = float("inf")
        path, fragment = folder / "inf.npy", "row 3 holds NaN, Inf or a number beyond float32"
        np.save(path, x.numpy())
    elif kind == "inf-csv":
        path, fragment = folder / "inf.csv", "row 1 holds NaN, Inf or a number beyond float32"
        path.write_text("a,b\n1.0,2.0\n3.0,inf\n" + "1.0,1.0\n" * 638)
    elif kind == "empty-csv":
        path, fragment = folder / "empty.csv", "file is empty"
        path.write_text("")
    elif kind == "header-only-csv":
        path, fragment = folder / "header.csv", "has zero rows"
        path.write_text("a,b\n")
    elif kind == "zero-rows-pt":
        path, fragment = folder / "zero.pt", "has zero rows"
        torch.save(torch.empty(0, 2), path)
    elif kind == "one-d":
        path, fragment = folder / "flat.pt", "expected a 2-D array [N, D], got shape (640,)"
        torch.save(x[:, 0].contiguous(), path)
    elif kind == "ragged-jsonl":
        path, fragment = folder / "ragged.jsonl", "line 2 has 3 values, expected 2"
        path.write_text("[1, 2]\n[1, 2, 3]\n")
    elif kind == "fewer-rows-than-a-batch":  # 60 rows, 54 after the val split, batch 64
        path, fragment = folder / "small.pt", "fewer than one batch (64)"
        torch.save(x[:60].clone(), path)
    elif kind == "wrong-extension":
        path, fragment = folder / "vectors.txt", "unsupported extension '.txt'"
        path.write_text("1 2\n")
    else:
        raise AssertionError(kind)
    return path, fragment


@pytest.mark.parametrize("kind", ["nan-pt", "inf-npy", "inf-csv", "empty-csv", "header-only-csv",
                                  "zero-rows-pt", "one-d", "ragged-jsonl",
                                  "fewer-rows-than-a-batch", "wrong-extension"])
def test_bad_data_file_is_one_line_exit_2(tmp_path, isolated_run_root, kind):
    path, fragment = write_data(kind, tmp_path)
    result = cli("train", "--dataset", path, "--epochs", "1", "--run-name", "d", *TINY)
    line = error_line(result, fragment)
    assert path.name in line
    assert not (isolated_run_root / "d").exists()


def test_resume_refuses_data_of_another_dimension(tmp_path, isolated_run_root):
    """What a real user does: the file at the checkpoint's dataset path was replaced."""
    data = vectors_file(tmp_path)
    assert cli("train", "--run-name", "dim", "--dataset", data, "--epochs", "1",
               *TINY).exit_code == 0
    run = isolated_run_root / "dim"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    data.unlink()
    torch.save(torch.randn(640, 3, generator=torch.Generator().manual_seed(1)), data)
    line = error_line(cli("resume", "dim", "--epochs", "2"), "has dimension 3",
                          "trained on dimension 2")
    assert str(data) in line
    other = vectors_file(tmp_path, dim=3)
    error_line(cli("train", "--resume", run / "last.pt", "--dataset", other, "--epochs", "2"),
                   "--dataset", "conflicts with the checkpoint")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before, "a refused resume changed the run folder"


def test_resume_on_changed_data_of_the_same_shape_says_so(tmp_path, isolated_run_root):
    data = vectors_file(tmp_path)
    assert cli("train", "--run-name", "drift", "--dataset", data, "--epochs", "1",
               *TINY).exit_code == 0
    torch.save(torch.randn(640, 2, generator=torch.Generator().manual_seed(5)), data)
    result = cli("resume", "drift", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    assert "the dataset changed since last.pt was written" in result.stderr
