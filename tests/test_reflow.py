"""flowctl train --flow reflow: teacher pairs, their cache, and the errors around a teacher."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from study.data.dataset import column_stats, file_sha256
from study.data.normalize import denormalize, normalize
from study.flow_matching.flows import ICFM, build_flow
from study.flow_matching.models import build_model
from study.flow_matching.reflow import PAIRS_NAME
from study.flow_matching.solvers import integrate
from tests.support.helpers import cli, error_line, load, vectors_file

# moons has 20,000 training rows: batch 256 keeps an epoch at 78 steps.
SMALL = ["--batch-size", "256", "--width", "16", "--depth", "2", "--warmup-steps", "5",
         "--wandb-mode", "disabled", "--plain"]


def train_teacher(ckpt_dir: Path, *extra: str, run_name: str = "teacher") -> Path:
    result = cli("train", "--flow", "icfm", "--dataset", "moons", "--epochs", "2",
                 "--run-name", run_name, "--ckpt-dir", ckpt_dir, "--overwrite", *SMALL, *extra)
    assert result.exit_code == 0, result.stderr
    return ckpt_dir / run_name / "best.pt"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """One icfm teacher on moons, shared read-only by the tests in this module."""
    return train_teacher(tmp_path_factory.mktemp("teachers"))


def train_student(teacher: Path, *extra: str, run_name: str = "student"):
    return cli("train", "--flow", "reflow", "--teacher", teacher, "--dataset", "moons",
               "--epochs", "1", "--run-name", run_name, *SMALL, *extra)



def test_reflow_flow_is_icfm_on_the_given_pairs():
    flow = build_flow("reflow", sigma=0.1)
    x_0, x_1 = torch.randn(16, 2), torch.randn(16, 2)
    paired_0, paired_1 = flow.pair(x_0, x_1, generator=torch.Generator().manual_seed(0))
    assert paired_0 is x_0 and paired_1 is x_1  # no re-pairing: the teacher's coupling stays
    t, eps = torch.rand(16), torch.randn(16, 2)
    x_t, u_t = flow.path(x_0, x_1, t, eps)
    expected = ICFM(sigma=0.1).path(x_0, x_1, t, eps)
    assert torch.equal(x_t, expected[0]) and torch.equal(u_t, x_1 - x_0)


def test_reflow_trains_and_reuses_cached_pairs(teacher, isolated_run_root):
    first = train_student(teacher)
    assert first.exit_code == 0, first.stderr
    run = isolated_run_root / "student"
    cache = run / PAIRS_NAME
    assert cache.is_file() and "integrating teacher" in first.stderr
    assert load(run / "best.pt")["config"]["teacher"] == str(teacher)
    written = cache.stat().st_mtime_ns

    again = train_student(teacher, "--overwrite")
    assert again.exit_code == 0, again.stderr
    assert "reusing 22000 pairs" in again.stderr and "integrating" not in again.stderr
    assert cache.stat().st_mtime_ns == written

    resumed = cli("resume", "student", "--epochs", "2", "--plain")
    assert resumed.exit_code == 0, resumed.stderr
    assert "reusing" in resumed.stderr and load(run / "last.pt")["epoch"] == 1


def test_pairs_are_row_aligned_teacher_samples(teacher, isolated_run_root):
    assert train_student(teacher).exit_code == 0
    pairs = load(isolated_run_root / "student" / PAIRS_NAME)
    assert pairs["teacher_sha256"] == file_sha256(teacher) and pairs["seed"] == 0
    assert pairs["train_x0"].shape == pairs["train_x1"].shape == (20_000, 2)
    assert pairs["val_x0"].shape == pairs["val_x1"].shape == (2_000, 2)
    # x_0 is the teacher's N(0, I) noise, as drawn; x_1 is in raw data units.
    assert pairs["train_x0"].mean(0).abs().max() < 0.05
    assert (pairs["train_x0"].std(0) - 1).abs().max() < 0.05

    # Re-run the teacher's ODE on a few rows, independently of reflow.py.
    payload = load(teacher)
    cfg, stats = payload["config"], payload["normalization_stats"]
    model = build_model(cfg["arch"], 2, width=cfg["width"], depth=cfg["depth"],
                        activation=cfg["activation"])
    model.load_state_dict({**payload["model_state_dict"], **payload["ema_shadow"]})
    for split in ("train", "val"):
        rows = torch.tensor([0, 1, 7, 1234 % len(pairs[f"{split}_x0"])])
        x_1 = integrate(model, pairs[f"{split}_x0"][rows], solver="rk4", steps=50).x_1
        torch.testing.assert_close(denormalize(x_1, stats), pairs[f"{split}_x1"][rows],
                                   atol=1e-5, rtol=1e-5)
        shuffled = integrate(model, pairs[f"{split}_x0"][rows.flip(0)], solver="rk4", steps=50).x_1
        assert not torch.allclose(denormalize(shuffled, stats), pairs[f"{split}_x1"][rows], atol=1e-2)

    # The student normalises the teacher's samples with their own stats.
    student = load(isolated_run_root / "student" / "best.pt")
    mean, std = column_stats(pairs["train_x1"])
    torch.testing.assert_close(student["normalization_stats"]["mean"], mean)
    torch.testing.assert_close(student["normalization_stats"]["std"], std)
    assert normalize(pairs["train_x1"], student["normalization_stats"]).std(0).sub(1).abs().max() < 1e-4


def test_pairs_regenerate_when_the_teacher_changes(teacher, tmp_path, isolated_run_root):
    copy = tmp_path / "teacher.pt"
    shutil.copy(teacher, copy)
    assert train_student(copy).exit_code == 0
    cache = isolated_run_root / "student" / PAIRS_NAME
    before = load(cache)

    shutil.copy(train_teacher(tmp_path / "other", "--seed", "1"), copy)
    changed = train_student(copy, "--overwrite")
    assert changed.exit_code == 0, changed.stderr
    output = changed.stdout + changed.stderr
    assert f"teacher {copy} changed since {PAIRS_NAME} was written" in output
    after = load(cache)
    assert after["teacher_sha256"] == file_sha256(copy) != before["teacher_sha256"]
    assert torch.equal(after["train_x0"], before["train_x0"])  # same seed, same noise
    assert not torch.equal(after["train_x1"], before["train_x1"])


def test_a_new_seed_regenerates_the_pairs(teacher, isolated_run_root):
    assert train_student(teacher).exit_code == 0
    reseeded = train_student(teacher, "--overwrite", "--seed", "3")
    assert reseeded.exit_code == 0, reseeded.stderr
    assert "seed changed" in reseeded.stderr
    assert load(isolated_run_root / "student" / PAIRS_NAME)["seed"] == 3


def test_reflow_without_a_teacher_is_one_line():
    error_line(cli("train", "--flow", "reflow", *SMALL), "reflow", "--teacher")


@pytest.mark.parametrize("kind", ["missing", "text", "folder"])
def test_a_teacher_that_is_not_a_checkpoint_is_one_line(kind, tmp_path):
    target = tmp_path / "teacher.pt"
    if kind == "text":
        target.write_text("not a checkpoint\n")
    elif kind == "folder":
        target = tmp_path / "empty-run"
        target.mkdir()
    error_line(train_student(target), str(target))


def test_teacher_of_another_dimension_is_one_line(tmp_path):
    data = vectors_file(tmp_path, dim=3)
    trained = cli("train", "--dataset", data, "--epochs", "1", "--run-name", "teacher3d",
                  "--ckpt-dir", tmp_path / "teachers", *SMALL[2:], "--batch-size", "64")
    assert trained.exit_code == 0, trained.stderr
    error_line(train_student(tmp_path / "teachers" / "teacher3d"), "dimension 3", "dimension 2")


def test_teacher_with_another_source_is_one_line(teacher):
    error_line(train_student(teacher, "--source", "moons"), "--source gaussian")
