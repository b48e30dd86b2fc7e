"""`flowctl inspect-ckpt`: the summary of real checkpoints, run-name lookup, bad files."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from study.cli.inspect_ckpt import inspect_ckpt
from study.runs.checkpoint import FORMAT_VERSION
from tests.support.checkpoints import build_checkpoint
from tests.support.helpers import CreatesMarker

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def make_app() -> typer.Typer:
    """Only this command: app.py also imports train/resume, written separately."""
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("inspect-ckpt")(inspect_ckpt)
    return app


def invoke(*args: str):
    return runner.invoke(make_app(), ["inspect-ckpt", *args], env=WIDE)




def save(ckpt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def summary_of(*args: str) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_help_has_example():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "flowctl inspect-ckpt" in result.output and "--no-tensors" in result.output


def test_json_summary_field_by_field(tmp_path: Path):
    ckpt, expected = build_checkpoint(epoch=2)
    path = save(ckpt, tmp_path / "best.pt")
    summary = summary_of(str(path))
    assert summary["path"] == str(path)
    assert summary["size_bytes"] == path.stat().st_size
    assert summary["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert summary["format_version"] == FORMAT_VERSION
    assert summary["epoch"] == 2 and summary["epochs_completed"] == 3
    assert summary["global_step"] == 80 and summary["batch_in_epoch"] == 0
    assert summary["stage"]["stage_name"] == "main" and summary["stage"]["stage_step"] == 80
    assert summary["best_loss"] == 0.125 and summary["epochs_without_improvement"] == 1
    assert summary["config"] == expected["config"]
    assert summary["parameter_count"] == 2 * 3 + 3
    assert summary["ema"] is True
    assert summary["tensors"] == [
        {"name": "weight", "shape": [3, 2], "dtype": "float32"},
        {"name": "bias", "shape": [3], "dtype": "float32"},
    ]
    optimizer = summary["optimizer"]
    assert optimizer["type"] == "AdamW"
    assert optimizer["lr"] == pytest.approx(expected["lr"]) and optimizer["lr"] == pytest.approx(2e-4)
    assert optimizer["step"] == 1
    (group,) = optimizer["param_groups"]
    assert group["params"] == 2 and group["betas"] == [0.9, 0.999] and group["weight_decay"] == 0.01
    assert summary["scheduler"]["last_epoch"] == 1
    assert summary["scheduler"]["last_lr"] == [pytest.approx(2e-4)]
    assert summary["normalization_stats"] == {
        "dim": 10, "mean": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], "std": [1.0] * 8}
    assert summary["rng_states"] == ["data", "t", "noise", "ot"]
    assert summary["wandb_run_id"] == "abc123" and summary["wandb_project"] == "flowctl"
    assert summary["torch_version"] == torch.__version__ and summary["flowctl_version"] == "0.1.0"
    assert summary["saved_at"] == "2026-11-26T08:15:05.123456+00:00"
    assert summary["dataset_checksum"] == "sha256:abc"
    # No tensor values anywhere but the short stats: the RNG states are names only.
    assert "log_window" not in summary and len(json.dumps(summary)) < 5000


def test_rich_view(tmp_path: Path):
    path = save(build_checkpoint()[0], tmp_path / "best.pt")
    result = invoke(str(path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert hashlib.sha256(path.read_bytes()).hexdigest() in out
    for text in ("checkpoint", "2 (3 completed)", "main (0)", "0.125", "model tensors", "weight",
                 "3x2", "float32", "AdamW", "last_epoch 1", "dim 10", "data, t, noise, ot",
                 "abc123", "flowctl 0.1.0", "arch", "mlp", "v1"):
        assert text in out, text
    no_tensors = invoke(str(path), "--no-tensors")
    assert no_tensors.exit_code == 0 and "model tensors" not in no_tensors.stdout


def test_run_name_resolves_best_and_last(isolated_run_root: Path):
    run_dir = isolated_run_root / "mlp-icfm-moons-none"
    save(build_checkpoint(epoch=4)[0], run_dir / "best.pt")
    save(build_checkpoint(epoch=7)[0], run_dir / "last.pt")
    assert summary_of("mlp-icfm-moons-none")["epoch"] == 4
    assert summary_of("mlp-icfm-moons-none", "--last")["epoch"] == 7
    assert summary_of(str(run_dir), "--last")["path"] == str(run_dir / "last.pt")
    assert summary_of(str(run_dir))["path"] == str(run_dir / "best.pt")


def test_ckpt_dir_flag(tmp_path: Path):
    other_root = tmp_path / "other"
    save(build_checkpoint(epoch=5)[0], other_root / "run-x" / "best.pt")
    assert summary_of("run-x", "--ckpt-dir", str(other_root))["epoch"] == 5


def test_no_tensors_drops_the_list(tmp_path: Path):
    path = save(build_checkpoint()[0], tmp_path / "c.pt")
    summary = summary_of(str(path), "--no-tensors")
    assert "tensors" not in summary and summary["parameter_count"] == 9


def test_original_study_format(tmp_path: Path):
    path = save(build_checkpoint(original=True)[0], tmp_path / "best.pt")
    summary = summary_of(str(path))
    assert summary["epoch"] == 2 and summary["parameter_count"] == 9
    for key in ("format_version", "global_step", "stage", "rng_states", "wandb_run_id",
                "torch_version", "flowctl_version", "saved_at", "dataset_checksum"):
        assert summary[key] is None, key
    assert summary["optimizer"]["type"] is None and summary["optimizer"]["step"] == 1
    result = invoke(str(path))
    assert result.exit_code == 0, result.output
    assert "original study format" in result.stdout and "rng states     -" in result.stdout


def test_torch_version_object_is_accepted(tmp_path: Path):
    # torch.__version__ is a TorchVersion, not a str; weights_only refuses it unless allowed.
    ckpt = {**build_checkpoint()[0], "torch_version": torch.__version__}
    summary = summary_of(str(save(ckpt, tmp_path / "c.pt")))
    assert summary["torch_version"] == str(torch.__version__)


def test_infinite_best_loss_is_null(tmp_path: Path):
    ckpt = build_checkpoint()[0]
    ckpt["best_loss"] = float("inf")
    result = invoke(str(save(ckpt, tmp_path / "c.pt")), "--json")
    assert result.exit_code == 0 and "Infinity" not in result.stdout
    assert json.loads(result.stdout)["best_loss"] is None


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def test_unknown_run_suggests_list_runs():
    assert_one_line_error(invoke("no-such-run"), "no-such-run", "flowctl list-runs")


def test_run_without_best_falls_back_to_last_like_sample(isolated_run_root: Path):
    save(build_checkpoint()[0], isolated_run_root / "only-last" / "last.pt")
    result = invoke("only-last", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["path"].endswith("only-last/last.pt")
    assert "only-last has no best.pt yet; using last.pt" in result.stderr


def _write_bad_file(kind: str, path: Path) -> None:
    good = build_checkpoint()[0]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated-legacy":
        torch.save(good, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "json":
        path.write_text(json.dumps({"model_state_dict": {}}))
    elif kind == "non-dict":
        torch.save([torch.zeros(3)], path)
    elif kind == "no-model":
        torch.save({"epoch": 1, "weights": torch.zeros(3)}, path)
    elif kind == "newer":
        torch.save({**good, "format_version": FORMAT_VERSION + 1}, path)


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty (0 bytes)"),
        ("truncated", "is not a torch checkpoint (truncated or corrupt)"),
        ("truncated-legacy", "is not a torch checkpoint (truncated or corrupt)"),
        ("random", "is not a torch checkpoint (truncated or corrupt)"),
        ("json", "is a JSON file, not a torch checkpoint"),
        ("non-dict", "is not a flowctl checkpoint (it holds a list)"),
        ("no-model", "is not a flowctl checkpoint (it holds a dict without model_state_dict)"),
        ("newer", f"newer flowctl (format {FORMAT_VERSION + 1} > {FORMAT_VERSION}); upgrade flowctl"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, kind: str, fragment: str):
    path = tmp_path / "bad.pt"
    _write_bad_file(kind, path)
    assert_one_line_error(invoke(str(path)), str(path), fragment)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_carrying_pickle_never_runs(tmp_path: Path, writer: str):
    # The payload is real: an unrestricted unpickler does create its marker file.
    proof = tmp_path / "proof-marker"
    pickle.loads(pickle.dumps(CreatesMarker(proof))).close()
    assert proof.exists()

    marker = tmp_path / "pwned-marker"
    path = tmp_path / "evil.pt"
    payload = {"model_state_dict": {}, "epoch": CreatesMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
        fragment = "needs arbitrary code to unpickle"
    else:
        path.write_bytes(pickle.dumps(payload))
        fragment = "is a plain pickle, not a torch checkpoint"
    assert_one_line_error(invoke(str(path)), str(path), fragment)
    assert_one_line_error(invoke(str(path), "--json"), fragment)
    assert not marker.exists()


# -- without torch ---------------------------------------------------------------------------

def imported_modules(*args: str) -> tuple[set[str], str]:
    """(modules `flowctl inspect-ckpt ARGS` imported, its stdout), from `python -X importtime`."""
    import subprocess
    import sys

    from tests.support.helpers import REPO_ROOT

    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "study.cli.app",
                             "inspect-ckpt", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, env={**__import__("os").environ, **WIDE})
    assert result.returncode == 0, result.stderr[-3000:]
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    return modules, result.stdout


@pytest.mark.parametrize("output", ["--json", "table"])
def test_inspect_never_imports_torch(tmp_path: Path, output: str):
    path = save(build_checkpoint()[0], tmp_path / "best.pt")
    modules, stdout = imported_modules(str(path), *([output] if output == "--json" else []))
    assert "typer" in modules, "expected -X importtime to list the imports"
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}
    assert "AdamW" in stdout and "weight" in stdout


def test_a_trained_checkpoint_is_read_without_torch(trained_run: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    """A checkpoint the trainer really wrote: every object in it is one the reader models
    (nothing falls back to torch), and the summary equals the one through torch."""
    from study.runs import checkpoint
    from study.runs.checkpoint_summary import (
        describe_loaded,
        load_checkpoint_info,
        summarize_checkpoint,
    )

    path = trained_run / "last.pt"
    through_torch = summarize_checkpoint(path, describe_loaded(checkpoint.read_checkpoint(path)))

    def no_fallback(path):
        raise AssertionError(f"fell back to torch for {path}")

    monkeypatch.setattr(checkpoint, "read_checkpoint", no_fallback)
    fast = summarize_checkpoint(path, load_checkpoint_info(path))
    assert json.dumps(fast) == json.dumps(through_torch)
    assert fast["global_step"] > 0 and fast["rng_states"] and fast["optimizer"]["step"] > 0


def test_code_in_a_hand_made_zip_never_runs(tmp_path: Path):
    from tests.support.checkpoints import hostile_files

    for kind, path in hostile_files(tmp_path).items():
        result = invoke(str(path), "--json")
        assert result.exit_code == 2, (kind, result.output)
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
        assert not (tmp_path / "marker").exists(), kind


def test_stats_adds_statistics_of_each_model_tensor(tmp_path: Path):
    ckpt = build_checkpoint()[0]
    ckpt["model_state_dict"]["bias"][1] = float("nan")
    path = save(ckpt, tmp_path / "best.pt")
    tensors = summary_of(str(path), "--stats")["tensors"]
    weight = ckpt["model_state_dict"]["weight"].double()
    assert tensors[0]["stats"] == {
        "min": pytest.approx(weight.min().item()), "max": pytest.approx(weight.max().item()),
        "mean": pytest.approx(weight.mean().item()),
        "std": pytest.approx(weight.std(correction=0).item()), "nonfinite": 0}
    assert tensors[1]["stats"]["nonfinite"] == 1
    finite_bias = ckpt["model_state_dict"]["bias"].double()[[0, 2]]
    assert tensors[1]["stats"]["mean"] == pytest.approx(finite_bias.mean().item())
    assert "stats" not in summary_of(str(path))["tensors"][0]
    table = invoke(str(path), "--stats")
    assert table.exit_code == 0 and "nonfinite" in table.stdout


def test_statistics_in_chunks_equal_the_whole_tensor():
    from study.runs.checkpoint_summary import tensor_statistics

    values = torch.randn(10_001, generator=torch.Generator().manual_seed(0)) * 3 + 100
    chunked, whole = tensor_statistics(values, chunk=999), tensor_statistics(values, chunk=1 << 22)
    assert chunked == {key: pytest.approx(value, rel=1e-12) for key, value in whole.items()}
    assert whole["std"] == pytest.approx(values.double().std(correction=0).item(), rel=1e-12)
