"""`flowctl sample`: shapes, units, determinism, formats, solvers and bad input.

The module reads a copy of the session's trained run (tests/support/trained_run.py), trained
on vectors with mean 1 and std 2, so de-normalized samples are easy to tell from normalized ones.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from study.flow_matching.models import build_model
from study.flow_matching.solvers import integrate
from tests.support.helpers import CreatesMarker, cli, error_line
from tests.support.trained_run import copy_run


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory) -> Path:
    """A finished 2-D run folder (best.pt, last.pt) under its own checkpoint root: a copy of
    the session's trained run (4 epochs at lr 1e-2, EMA decay 0.9: 36 steps move the EMA
    weights away from the init), since `sample` without --out writes into the run folder."""
    return copy_run(trained_run, tmp_path_factory.mktemp("sample") / "checkpoints")


def sample(*args) -> tuple[int, str, str]:
    result = cli("sample", *args, "--device", "cpu")
    return result.exit_code, result.stdout, result.stderr


def nfe_of(stdout: str) -> int:
    found = re.search(r"nfe (\d+)", stdout)
    assert found, f"expected 'nfe N' in the output, got {stdout!r}"
    return int(found.group(1))


def test_help():
    result = cli("sample", "--help")
    assert result.exit_code == 0
    assert "Example: flowctl sample" in result.stdout


def test_samples_are_the_ema_model_flow_in_data_units(run):
    code, stdout, stderr = sample(run, "--n", "2000", "--steps", "20")
    assert code == 0, stderr
    path = run / "samples.pt"
    assert f"wrote {path}" in stdout and "shape 2000x2" in stdout and "nfe 20" in stdout
    samples = torch.load(path, weights_only=True)
    assert samples.shape == (2000, 2) and samples.dtype == torch.float32
    assert torch.isfinite(samples).all()

    # Known answer: x_0 ~ N(0, I) from the seed, Euler through the EMA weights, de-normalized.
    ckpt = torch.load(run / "best.pt", weights_only=True)
    config, stats = ckpt["config"], ckpt["normalization_stats"]
    model = build_model(config["arch"], 2, width=config["width"], depth=config["depth"],
                        activation=config["activation"])
    assert any(not torch.equal(ckpt["ema_shadow"][k], v) for k, v in ckpt["model_state_dict"].items())
    model.load_state_dict(ckpt["ema_shadow"])
    x_0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_1 = integrate(lambda x_t, t: model(x_t, t), x_0, solver="euler", steps=20).x_1
    torch.testing.assert_close(samples, x_1 * stats["std"] + stats["mean"])
    # The data are N(1, 2^2) per column: samples are on that scale, not the normalized one.
    assert (samples.std(0) > 1.3).all() and (samples.mean(0) > 0.3).all(), (samples.mean(0), samples.std(0))


def test_same_seed_same_samples_other_seed_other_samples(run, tmp_path):
    outs = {name: tmp_path / f"{name}.pt" for name in ("a", "b", "c")}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, _, stderr = sample(run / "best.pt", "--n", "64", "--steps", "5", "--seed", seed,
                                 "--out", outs[name])
        assert code == 0, stderr
    a, b, c = (torch.load(outs[name], weights_only=True) for name in "abc")
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_batches_do_not_change_fixed_step_samples(run, tmp_path):
    one, many = tmp_path / "one.pt", tmp_path / "many.pt"
    assert sample(run, "--n", "100", "--steps", "5", "--out", one)[0] == 0
    assert sample(run, "--n", "100", "--steps", "5", "--batch-size", "7", "--out", many)[0] == 0
    a, b = torch.load(one, weights_only=True), torch.load(many, weights_only=True)
    torch.testing.assert_close(a, b)


def test_npy_format(run, tmp_path):
    code, stdout, stderr = sample(run, "--n", "10", "--steps", "2", "--format", "npy")
    assert code == 0, stderr
    array = np.load(run / "samples.npy", allow_pickle=False)
    assert array.shape == (10, 2) and np.isfinite(array).all()
    # An --out ending in .npy picks the format by itself.
    out = tmp_path / "out" / "x.npy"
    assert sample(run, "--n", "5", "--steps", "2", "--out", out)[0] == 0
    assert np.load(out, allow_pickle=False).shape == (5, 2)


@pytest.mark.parametrize(("solver", "steps", "nfe"),
                         [("euler", 10, 10), ("midpoint", 10, 20), ("rk4", 10, 40), ("dopri5", 10, None)])
def test_each_solver_reports_nfe(run, tmp_path, solver, steps, nfe):
    code, stdout, stderr = sample(run, "--n", "32", "--solver", solver, "--steps", steps,
                                  "--out", tmp_path / "s.pt")
    assert code == 0, stderr
    if nfe is None:  # adaptive: its own count, at least one 7-stage step
        assert nfe_of(stdout) >= 7
    else:
        assert nfe_of(stdout) == nfe
    assert torch.isfinite(torch.load(tmp_path / "s.pt", weights_only=True)).all()


def test_last_uses_last_pt(run, tmp_path):
    code, _, stderr = sample(run, "--last", "--n", "8", "--steps", "2", "--out", tmp_path / "l.pt")
    assert code == 0, stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--solver", "heun"], "unknown solver 'heun'"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--n", "0"], "--n must be a positive integer"),
    (["--format", "csv"], "unknown --format 'csv'"),
])
def test_bad_flags_are_one_line_errors(run, args, message):
    code, _, stderr = sample(run, *args)
    assert code == 2
    error_line(stderr, message)


def test_missing_run_is_one_line_error():
    code, _, stderr = sample("no-such-run")
    assert code == 2
    assert error_line(stderr).startswith("error: no checkpoint or run named 'no-such-run'")


def test_weights_that_do_not_fit_the_config_are_one_line_error(run, tmp_path):
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["config"]["width"] = 32  # the tensors are 16 wide
    torch.save(ckpt, tmp_path / "bent.pt")
    code, _, stderr = sample(tmp_path / "bent.pt")
    assert code == 2
    error_line(stderr, "weights do not fit a mlp model (width 32")


def test_checkpoint_with_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": CreatesMarker(marker)}, path)
    code, _, stderr = sample(path)
    assert code == 2
    assert error_line(stderr).startswith("error: refusing to load")
    assert not marker.exists(), "unpickling ran code"
    # The payload is live: unpickling it for real does create its marker.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(CreatesMarker(control))).close()
    assert control.exists()
