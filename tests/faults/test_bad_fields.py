"""Issue 24, item 14: classes of bad input re-tried in other forms, each at every place it
enters: a damaged metrics.csv (resume, plot), a plain file where a run folder should be,
checkpoints that load with weights_only=True but hold fields of the wrong type or absurd
values, a checkpoint with NaN weights, an output name longer than the file system allows.
Each: one line (or one warning), its exit code, and nothing outside the run changed."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.support.attacks import fingerprint
from tests.support.helpers import cli, error_line, load, metrics_rows, run_flags, vectors_file


@pytest.fixture
def trained(tmp_path, isolated_run_root):
    result = cli("train", "--run-name", "r", *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr
    return isolated_run_root / "r"


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00 not utf-8\n", b"1,0," + b"9" * 200_000 + b"\n",
                                    b"2,0,0,not-a-number\n", b"\x1b[2J,,,\n"])
def test_a_damaged_metrics_line_costs_itself_in_resume_and_plot(tmp_path, trained, damage):
    rows = metrics_rows(trained)
    with open(trained / "metrics.csv", "ab") as handle:
        handle.write(damage)
    before = fingerprint(tmp_path, skip=(trained,))
    plotted = cli("plot", "r", "--n", "50")
    assert plotted.exit_code == 0 and "Traceback" not in plotted.stderr, plotted.stderr
    assert "1 damaged line(s) left out" in plotted.stderr
    resumed = cli("resume", "r", "--epochs", "2")
    assert resumed.exit_code == 0, resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if "damaged line" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), resumed.stderr
    assert metrics_rows(trained)[:len(rows)] == rows
    assert fingerprint(tmp_path, skip=(trained,)) == before


def test_a_plain_file_where_a_run_folder_should_be(tmp_path, isolated_run_root):
    isolated_run_root.mkdir()
    (isolated_run_root / "plain").write_text("my notes")
    before = fingerprint(tmp_path)
    data = vectors_file(tmp_path)
    after_data = fingerprint(tmp_path)
    error_line(cli("train", "--run-name", "plain", *run_flags(data, epochs=1)),
               "plain is a file, not a run folder")
    for args in (("resume", "plain"), ("inspect-ckpt", "plain"), ("sample", "plain"),
                 ("eval", "plain"), ("plot", "plain")):
        error_line(cli(*args), "plain is a file, not a run folder")
    assert fingerprint(tmp_path) == after_data and before.items() <= after_data.items()


FIELD_DAMAGE = {
    "epoch-text": (lambda c: c.update(epoch="3"), "epoch is '3'"),
    "epoch-absurd": (lambda c: c.update(epoch=10**15), "epoch is 1000000000000000"),
    "step-negative": (lambda c: c.update(global_step=-4), "global_step is -4"),
    "step-float": (lambda c: c.update(global_step=1.5), "global_step is 1.5"),
    "world-size-zero": (lambda c: c.update(world_size=0), "world_size is 0"),
    "config-text": (lambda c: c.update(config="lr=1"), "config is a str"),
    "optimizer-list": (lambda c: c.update(optimizer_state_dict=[1]), "optimizer_state_dict is a list"),
    "weights-text": (lambda c: c.update(model_state_dict={"net.0.weight": "w"}),
                     "model_state_dict must map parameter names to tensors"),
    "weights-list": (lambda c: c.update(model_state_dict=[1, 2]), "model_state_dict must map"),
    "ema-numbers": (lambda c: c.update(ema_shadow={"a": 1}), "ema_shadow must map"),
}


@pytest.mark.parametrize("kind", list(FIELD_DAMAGE))
def test_a_checkpoint_field_of_the_wrong_type_is_one_line_everywhere(tmp_path, trained_run,
                                                                     isolated_run_root, kind):
    damage, fragment = FIELD_DAMAGE[kind]
    checkpoint = copy.deepcopy(load(trained_run / "last.pt"))
    damage(checkpoint)
    folder = isolated_run_root / "damaged"
    folder.mkdir(parents=True)
    torch.save(checkpoint, folder / "last.pt")
    before = fingerprint(tmp_path, skip=(folder,))
    for args in (("inspect-ckpt", folder / "last.pt"), ("sample", folder / "last.pt", "--n", "5",
                 "--out", tmp_path / "s.pt"), ("resume", "damaged", "--epochs", "3"),
                 ("eval", folder / "last.pt", "--n", "10")):
        error_line(cli(*args), "last.pt is not a usable flowctl checkpoint", fragment)
    assert fingerprint(tmp_path, skip=(folder,)) == before


def test_a_checkpoint_with_nan_weights_is_not_sampled(tmp_path, trained_run):
    checkpoint = load(trained_run / "best.pt")
    for tensors in (checkpoint["model_state_dict"], checkpoint.get("ema_shadow") or {}):
        for tensor in tensors.values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    torch.save(checkpoint, tmp_path / "nan.pt")
    before = fingerprint(tmp_path)
    error_line(cli("sample", tmp_path / "nan.pt", "--n", "5", "--steps", "2",
                   "--out", tmp_path / "s.pt"), "hold NaN or Inf", "nothing written")
    assert fingerprint(tmp_path) == before


def test_an_output_name_longer_than_a_file_name_may_be(tmp_path, trained_run):
    before = fingerprint(tmp_path)
    for name in ("s" * 252 + ".pt", "é" * 125 + ".pt", "d" * 300 + "/s.pt"):
        error_line(cli("sample", trained_run, "--n", "5", "--out", tmp_path / name),
                   "bytes; a name may hold")
    assert fingerprint(tmp_path) == before
