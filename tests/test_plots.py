"""Every plot writes a real PNG, without a display."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest
import torch

from study.errors import UsageError
from study.flow_matching.plots import plot_loss_curves, plot_marginals, plot_samples_2d

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

METRICS_CSV = """\
step,epoch,stage_id,train/loss,train/grad_norm,train/lr,val/loss,val/best_loss
10,0,0,2.0,1.5,0.001,,
20,0,0,1.5,1.2,0.001,,
25,0,0,,,,1.4,1.4
30,1,1,1.2,1.0,0.0005,,
40,1,1,1.0,0.9,0.0005,,
50,1,1,0.9,0.8,0.0005,1.1,1.1
"""


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 1024
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.fixture
def metrics_csv(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "metrics.csv"
    path.parent.mkdir()
    path.write_text(METRICS_CSV)
    return path


@pytest.mark.parametrize("log_scale", [False, True])
def test_loss_curves_with_empty_cells_and_two_stages(metrics_csv, tmp_path, log_scale):
    out = plot_loss_curves(metrics_csv, tmp_path / "plots" / "loss.png", log_scale=log_scale)
    assert out == tmp_path / "plots" / "loss.png"
    assert_png(out)


def test_loss_curves_without_val_loss(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,epoch,stage_id,train/loss\n1,0,0,1.0\n2,0,0,0.5\n")
    assert_png(plot_loss_curves(path, tmp_path / "loss.png"))


def test_loss_curves_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match="no metrics file"):
        plot_loss_curves(tmp_path / "missing.csv", tmp_path / "loss.png")
    empty = tmp_path / "metrics.csv"
    empty.write_text("step,epoch,stage_id,train/loss,val/loss\n")
    with pytest.raises(UsageError, match="no train/loss or val/loss"):
        plot_loss_curves(empty, tmp_path / "loss.png")


def test_samples_2d_with_trajectories(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data, samples = (
        torch.randn(500, 2, generator=generator),
        torch.randn(300, 2, generator=generator),
    )
    trajectories = torch.randn(11, 50, 2, generator=generator).cumsum(dim=0)
    assert_png(plot_samples_2d(samples, data, tmp_path / "samples.png", trajectories=trajectories))
    assert_png(plot_samples_2d(samples, data, tmp_path / "samples_only.png"))


def test_samples_2d_rejects_other_dimensions(tmp_path):
    with pytest.raises(UsageError, match=r"\[N, 2\]"):
        plot_samples_2d(torch.zeros(5, 3), torch.zeros(5, 3), tmp_path / "samples.png")


@pytest.mark.parametrize("dims", [1, 3, 6])
def test_marginals(tmp_path, dims):
    generator = torch.Generator().manual_seed(0)
    data, samples = (
        torch.randn(400, dims, generator=generator),
        torch.randn(300, dims, generator=generator) + 0.5,
    )
    assert_png(plot_marginals(samples, data, tmp_path / f"marginals_{dims}.png", max_dims=5))
