"""`flowctl eval`: eval.json, --json, trained vs untrained, --compare, wandb summary, bad input.

One run is trained per module on built-in moons (wandb offline, a few seconds on CPU); an
"untrained" run is the same checkpoint with freshly initialised weights and no wandb run.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from study.flow_matching.models import build_model
from tests.support.helpers import (
    CreatesMarker,
    cli,
    error_line,
    vectors_file,
    wandb_files,
    wandb_records,
)

KEYS = {"w2", "mmd", "nfe", "path_energy", "npe", "straightness", "w2_floor", "mmd_floor", "n",
        "solver", "steps"}
FAST = ["--n", "500", "--steps", "20", "--device", "cpu", "--draws", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """{"trained": run folder, "untrained": run folder} under one checkpoint root."""
    root = tmp_path_factory.mktemp("eval") / "checkpoints"
    with pytest.MonkeyPatch.context() as env:
        env.delenv("WANDB_MODE", raising=False)
        env.delenv("WANDB_DIR", raising=False)
        env.setenv("WANDB_SILENT", "true")
        result = cli("train", "--dataset", "moons", "--epochs", "6", "--batch-size", "512",
                     "--lr", "1e-2", "--warmup-steps", "5", "--ema-decay", "0.9", "--patience", "0",
                     "--run-name", "trained", "--ckpt-dir", root, "--wandb-mode", "offline",
                     "--plain")
    assert result.exit_code == 0, result.stderr
    ckpt = torch.load(root / "trained" / "best.pt", weights_only=True)
    torch.manual_seed(1)
    config = ckpt["config"]
    fresh = build_model(config["arch"], 2, width=config["width"], depth=config["depth"],
                        activation=config["activation"]).state_dict()
    ckpt.update(model_state_dict=fresh, ema_shadow=fresh, wandb_run_id=None)
    (root / "untrained").mkdir()
    torch.save(ckpt, root / "untrained" / "best.pt")
    return {"trained": root / "trained", "untrained": root / "untrained"}


@pytest.fixture(scope="module")
def compared(runs) -> list[dict]:
    """`eval trained --compare untrained --json` (wandb offline), run once for the module."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("WANDB_MODE", raising=False)
        env.setenv("WANDB_SILENT", "true")
        result = cli("eval", runs["trained"], "--compare", runs["untrained"], "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def summary_of(path: Path) -> dict:
    summary = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def test_help():
    result = cli("eval", "--help")
    assert result.exit_code == 0
    assert "Example: flowctl eval" in result.stdout and "--compare" in result.stdout


def test_eval_json_holds_finite_metrics(runs, compared):
    record = json.loads((runs["trained"] / "eval.json").read_text())
    assert KEYS <= set(record)
    for key in KEYS - {"solver"}:
        assert isinstance(record[key], (int, float)) and math.isfinite(record[key]), (key, record[key])
    assert (record["n"], record["solver"], record["steps"], record["nfe"]) == (500, "euler", 20, 20)
    assert record["w2_floor"] > 0 and record["path_energy"] > 0
    assert record["data"].startswith("test split of built-in moons")


def test_json_output_equals_eval_json_for_each_compared_run(runs, compared):
    assert [Path(r["checkpoint"]).parent for r in compared] == [runs["trained"], runs["untrained"]]
    for record in compared:
        on_disk = json.loads((Path(record["checkpoint"]).parent / "eval.json").read_text())
        assert {k: v for k, v in record.items() if k != "compared_with"} == on_disk


def test_k_draws_are_k_evaluations_and_their_mean_and_std(runs, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = ["--n", "300", "--steps", "10", "--json"]
    result = cli("eval", runs["trained"], "--draws", "3", "--seed", "7", *args)
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    draws = record["per_draw"]
    assert record["draws"] == 3 and record["seeds"] == [7, 8, 9] == [d["seed"] for d in draws]
    for key in ("w2", "mmd", "w2_floor", "mmd_floor"):
        values = [d[key] for d in draws]
        assert len(set(values)) == 3, (key, values)  # independent draws differ
        assert record[key] == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert record[f"{key}_std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert record == json.loads((runs["trained"] / "eval.json").read_text())
    # Draw i is exactly the single evaluation with seed 7 + i.
    single = cli("eval", runs["trained"], "--draws", "1", "--seed", "8", *args)
    assert single.exit_code == 0, single.stderr
    one = json.loads(single.stdout)
    assert (one["w2"], one["mmd"]) == (draws[1]["w2"], draws[1]["mmd"])
    assert one["w2_std"] is None and one["per_draw"] == [draws[1]]


def test_compare_says_worse_beyond_the_spread_and_within_it_for_the_same_model(runs, compared,
                                                                                tmp_path, monkeypatch):
    assert "compared_with" not in compared[0]
    assert compared[1]["compared_with"] == {"run": "trained", "w2": "worse", "mmd": "worse"}
    monkeypatch.setenv("WANDB_MODE", "disabled")
    (tmp_path / "twin").mkdir()
    shutil.copy(runs["trained"] / "best.pt", tmp_path / "twin" / "best.pt")
    args = ["--n", "200", "--steps", "10", "--draws", "3"]
    result = cli("eval", runs["untrained"], "--compare", runs["trained"], tmp_path / "twin",
                 "--json", *args)
    assert result.exit_code == 0, result.stderr
    _, trained, twin = json.loads(result.stdout)
    assert trained["compared_with"] == {"run": "untrained", "w2": "better", "mmd": "better"}
    assert twin["compared_with"]["w2"] == "better"
    result = cli("eval", runs["trained"], "--compare", tmp_path / "twin", "--json", *args)
    twin = json.loads(result.stdout)[1]
    assert twin["compared_with"] == {"run": "trained", "w2": "within spread",
                                     "mmd": "within spread"}
    table = cli("eval", runs["trained"], "--compare", tmp_path / "twin", *args)
    assert table.exit_code == 0, table.stderr
    assert any("W2 vs trained" in line and "within spread" in line
               for line in table.stdout.splitlines()), table.stdout


def test_eval_summary_goes_to_the_runs_own_wandb_run(runs, compared):
    run_id = json.loads((runs["trained"] / "run.json").read_text())["wandb_run_id"]
    files = wandb_files(runs["trained"], run_id)
    assert len(files) == 2, "the training segment and the eval segment of the same run id"
    run_ids = {r.run.run_id for r in wandb_records(files[-1]) if r.WhichOneof("record_type") == "run"}
    assert run_ids == {run_id}
    summary = summary_of(files[-1])
    assert summary["eval/w2"] == pytest.approx(compared[0]["w2"])
    assert summary["eval/nfe"] == 20 and "eval/npe" in summary and "eval/w2_floor" in summary
    assert not (runs["untrained"] / "wandb").exists(), "no wandb run id: nothing logged"


def test_single_run_prints_one_object_and_table(runs, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    before = wandb_files(runs["trained"])
    result = cli("eval", runs["untrained"] / "best.pt", "--json", "--n", "100", "--steps", "5",
                 "--solver", "rk4", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert isinstance(record, dict) and record["nfe"] == 20 and record["n"] == 100
    table = cli("eval", runs["untrained"], "--n", "100", "--steps", "5")
    assert table.exit_code == 0, table.stderr
    for label in ("W2", "W2 floor", "MMD²", "NFE", "NPE", "straightness", "floor:"):
        assert label in table.stdout
    assert wandb_files(runs["trained"]) == before


def test_wandb_failure_is_one_warning(runs, tmp_path, monkeypatch):
    import wandb

    def init(*args, **kwargs):
        raise RuntimeError("wandb service unreachable")

    monkeypatch.setattr(wandb, "init", init)
    (tmp_path / "copy").mkdir()
    shutil.copy(runs["trained"] / "best.pt", tmp_path / "copy" / "best.pt")  # keeps the run id
    result = cli("eval", tmp_path / "copy", "--n", "50", "--steps", "2")
    assert result.exit_code == 0, result.stderr
    assert "wandb init failed" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert json.loads((tmp_path / "copy" / "eval.json").read_text())["n"] == 50


def test_several_runs_need_compare(runs):
    result = cli("eval", runs["trained"], runs["untrained"])
    error_line(result, "add --compare")


def test_data_with_the_wrong_dimension_is_refused(runs, tmp_path):
    data = vectors_file(tmp_path, rows=50, dim=3)
    result = cli("eval", runs["untrained"], "--data", data, "--n", "10")
    error_line(result, "dimension 2")


def test_data_file_is_used(runs, tmp_path):
    data = vectors_file(tmp_path, rows=50, dim=2)
    result = cli("eval", runs["untrained"], "--data", data, "--n", "20", "--steps", "2", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["n"] == 20 and record["data"] == f"{data} (50 rows)"


@pytest.mark.parametrize(("args", "message"), [
    (["--solver", "heun"], "unknown solver 'heun'"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--draws", "0"], "--draws must be a positive integer"),
])
def test_bad_flags_are_one_line_errors(runs, args, message):
    result = cli("eval", runs["untrained"], *args)
    error_line(result, message)


def test_missing_run_is_one_line_error():
    result = cli("eval", "no-such-run")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no checkpoint or run named 'no-such-run'")


def test_checkpoint_with_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"model_state_dict": CreatesMarker(marker)}, tmp_path / "evil.pt")
    result = cli("eval", tmp_path / "evil.pt")
    assert error_line(result).startswith("error: refusing to load")
    assert not marker.exists(), "unpickling ran code"
    assert not (tmp_path / "eval.json").exists()
