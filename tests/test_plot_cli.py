"""`flowctl plot`: PNGs in the run folder (loss, 2-D samples or marginals) and bad input.

The 2-D run is a copy of the session's trained run; a 3-D one is trained per module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.support.helpers import TINY, CreatesMarker, cli, error_line, vectors_file
from tests.support.trained_run import copy_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory) -> dict[int, Path]:
    """{dim: finished run folder} for 2-D and 3-D vectors: the 2-D one a copy of the session's
    trained run (plot writes its PNGs into the run folder), the 3-D one trained here."""
    root = tmp_path_factory.mktemp("plot")
    folders = {2: copy_run(trained_run, root / "checkpoints")}
    data = vectors_file(root, rows=640, dim=3)
    result = cli("train", "--dataset", data, "--epochs", "2", "--run-name", "d3",
                 "--ckpt-dir", root / "checkpoints", *TINY)
    assert result.exit_code == 0, result.stderr
    folders[3] = root / "checkpoints" / "d3"
    return folders


def assert_png(path: Path) -> None:
    assert path.is_file(), f"expected {path}"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 1024


def test_help():
    result = cli("plot", "--help")
    assert result.exit_code == 0
    assert "Example: flowctl plot" in result.stdout


def test_2d_run_gets_loss_and_samples(runs):
    folder = runs[2]
    result = cli("plot", folder.name, "--ckpt-dir", folder.parent, "--n", "200", "--log-scale",
                 "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [str(folder / "loss.png"), str(folder / "samples.png")]
    assert_png(folder / "loss.png")
    assert_png(folder / "samples.png")
    assert not (folder / "marginals.png").exists()


def test_3d_run_gets_marginals_instead_of_samples(runs):
    folder = runs[3]
    result = cli("plot", folder, "--n", "200", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [str(folder / "loss.png"), str(folder / "marginals.png")]
    assert_png(folder / "loss.png")
    assert_png(folder / "marginals.png")
    assert not (folder / "samples.png").exists()


def test_run_without_metrics_is_one_line_error(runs, tmp_path):
    folder = tmp_path / "no-metrics"
    folder.mkdir()
    shutil.copy(runs[2] / "best.pt", folder / "best.pt")
    result = cli("plot", folder)
    assert result.exit_code == 2
    assert result.stderr == f"error: no metrics file at {folder / 'metrics.csv'}\n"
    assert not list(folder.glob("*.png"))


def test_missing_run_is_one_line_error():
    result = cli("plot", "no-such-run")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no checkpoint or run named 'no-such-run'")


def test_checkpoint_with_code_is_refused(runs, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(runs[2] / "metrics.csv", folder / "metrics.csv")
    marker = tmp_path / "marker"
    torch.save({"model_state_dict": CreatesMarker(marker)}, folder / "best.pt")
    result = cli("plot", folder)
    assert error_line(result).startswith("error: refusing to load")
    assert not marker.exists(), "unpickling ran code"
    assert not list(folder.glob("*.png"))
