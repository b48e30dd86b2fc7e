"""Tong et al.'s 2-D benchmark: the runner's datasets (scales as read from its code), the two
example grids (published protocol, flowctl defaults), and one point of each trained and scored.

Shapes, split sizes and determinism of the `tong-*` built-ins are covered with every built-in
by tests/test_data.py (they are in TOY_DATASETS).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from study.data import tong2023
from study.data.toy import TOY_DATASETS, sample_source
from study.sweep.grid import load_grid
from tests.support.helpers import REPO_ROOT, assert_same_state, cli, load

N = 40_000
TASKS = {("gaussian", "tong-8gaussians"), ("tong-pair-moons", "tong-pair-8gaussians"),
         ("gaussian", "tong-moons"), ("gaussian", "tong-scurve")}


def _draw(name: str, n: int = N, seed: int = 0) -> torch.Tensor:
    return TOY_DATASETS[name](n, torch.Generator().manual_seed(seed))


def _component_std(points: torch.Tensor, radius: float) -> float:
    """The std of isotropic components centred on a circle of `radius`: E|x|^2 = r^2 + 2 s^2."""
    return math.sqrt((points.pow(2).sum(dim=1).mean().item() - radius**2) / 2)


def test_tong_moons_is_sklearn_moons_noise_005_times_2_shifted_left_by_1():
    x = _draw("tong-moons")
    # sklearn moons (noise 0.05): x in [-1, 2], y in [-0.5, 1], mean (0.5, 0.25); then x2, x - 1.
    assert torch.allclose(x.mean(0), torch.tensor([0.0, 0.5]), atol=0.03)
    assert -3.4 < x[:, 0].min() < -2.8 and 2.8 < x[:, 0].max() < 3.4
    assert -1.4 < x[:, 1].min() < -0.8 and 1.8 < x[:, 1].max() < 2.4
    # the noise: distance to the unit half circle (outer moon, scaled by 2) is 2 x 0.05 wide
    outer = x[x[:, 1] > 1.2]  # only outer-moon points reach this high
    radial = ((outer[:, 0] + 1) ** 2 + outer[:, 1] ** 2).sqrt() - 2.0
    assert abs(radial.std().item() - 0.1) < 0.01


def test_tong_scurve_is_sklearn_s_curve_noise_005_x_and_z_times_1_5():
    x = _draw("tong-scurve")
    assert x.mean(0).abs().max() < 0.05
    assert 1.5 < x[:, 0].max() < 1.8 and -1.8 < x[:, 0].min() < -1.5
    assert 2.9 < x[:, 1].max() < 3.4 and -3.4 < x[:, 1].min() < -2.9
    # x = 1.5 sin(t) with t uniform on [-3pi/2, 3pi/2]: E[x^2] = 1.5^2 / 2 (+ noise)
    assert abs(x[:, 0].pow(2).mean().item() - (1.125 + 1.5**2 * 0.05**2)) < 0.03


def test_tong_8gaussians_is_torchdyns_radius_5_std_1_with_equal_components():
    x = _draw("tong-8gaussians")
    assert abs(_component_std(x, 5.0) - 1.0) < 0.03 and x.mean(0).abs().max() < 0.05
    assert abs(x.norm(dim=1).mean().item() - 5.1) < 0.05  # E|c + e| for |c| = 5, e ~ N(0, I)
    angles = torch.atan2(x[:, 1], x[:, 0])
    counts = torch.bincount(((angles + math.pi / 8) % (2 * math.pi) / (math.pi / 4)).long(), minlength=8)
    assert counts.min() > N / 8 * 0.95  # n // 8 per component (up to overlap at the borders)


def test_the_moons_to_8gaussians_pair_uses_two_dim_pys_scalings():
    moons = _draw("tong-pair-moons")
    # standardised by one mean and one std over both columns, then x7
    assert abs(moons.mean().item()) < 0.05 and abs(moons.std().item() - 7.0) < 0.07
    raw = tong2023.sklearn_moons(N, tong2023.PAIR_MOONS_NOISE, torch.Generator().manual_seed(1))
    assert abs(raw.mean().item() - tong2023.PAIR_MOONS_MEAN) < 0.01
    assert abs(raw.std().item() - tong2023.PAIR_MOONS_STD) < 0.01
    gaussians = _draw("tong-pair-8gaussians")
    assert abs(_component_std(gaussians, 12.0) - 1.5) < 0.05
    assert abs(gaussians.norm(dim=1).median().item() - 12.0) < 0.2


def test_a_tong_dataset_is_a_2d_source():
    generator = torch.Generator().manual_seed(0)
    x_0 = sample_source("tong-pair-moons", 64, 2, generator)
    assert x_0.shape == (64, 2) and torch.isfinite(x_0).all()


def _grid(name: str):
    return load_grid(REPO_ROOT / "examples" / f"{name}.yaml")


def test_the_published_grid_is_4_flows_x_4_tasks_x_5_seeds_without_fm_on_the_pair():
    grid = _grid("tong2023_2d")
    assert grid.group == "tong2023-2d" and len(grid.points) == 75
    configs = [p.config for p in grid.points]
    assert {(c.source, c.dataset) for c in configs} == TASKS
    assert {c.seed for c in configs} == {42, 43, 44, 45, 46}
    combos = {(c.flow, c.source, c.dataset) for c in configs}
    assert len(combos) == 15 and ("fm", "tong-pair-moons", "tong-pair-8gaussians") not in combos
    for config in configs:
        assert config.sigma == (1.0 if config.flow == "sbcfm" else 0.1), config.name
        assert (config.width, config.depth, config.activation) == (64, 3, "selu")
        assert (config.lr, config.weight_decay, config.batch_size, config.epochs) == (1e-3, 1e-5, 512, 1000)
        assert (config.scheduler.type, config.warmup_steps, config.ema_decay) == ("constant", 0, 0.0)
        assert (config.normalize, config.grad_clip, config.select_by) == ("none", 0.0, "val_loss")
    assert "sbcfm-tong-pair-moons-to-tong-pair-8gaussians-s42" in {p.name for p in grid.points}


def test_the_defaults_grid_has_the_same_points_at_flowctls_defaults_and_step_budget():
    published, defaults = _grid("tong2023_2d"), _grid("tong2023_2d_defaults")
    key = lambda c: (c.flow, c.source, c.dataset, c.seed)  # noqa: E731
    assert {key(p.config) for p in defaults.points} == {key(p.config) for p in published.points}
    assert not {p.name for p in defaults.points} & {p.name for p in published.points}
    rows = tong2023.SPLIT_SIZES["train"]
    budget = published.points[0].config.epochs * (rows // 512)
    for point in defaults.points:
        config = point.config
        steps = config.epochs * (rows // config.batch_size)
        assert abs(steps - budget) <= rows // config.batch_size, (steps, budget)
        assert config.lr == 3e-3 and config.normalize == "standard" and config.ema_decay == 0.999


@pytest.mark.parametrize("grid_name,point", [
    ("tong2023_2d", "sbcfm-tong-pair-moons-to-tong-pair-8gaussians-s42"),
    ("tong2023_2d_defaults", "defaults-icfm-gaussian-to-tong-moons-s43"),
])
def test_a_point_of_each_grid_trains_and_evaluates_at_a_small_budget(grid_name, point, tmp_path,
                                                                      isolated_run_root):
    config = _grid(grid_name).point(point).config.to_dict()
    config_file = tmp_path / "point.yaml"
    config_file.write_text(yaml.safe_dump({**config, "epochs": 1}))
    result = cli("train", "--config", config_file, "--wandb-mode", "disabled", "--plain")
    assert result.exit_code == 0, result.stderr
    saved = load(isolated_run_root / point / "last.pt")
    assert saved["config"]["source"] == config["source"] and saved["global_step"] == 10_000 // config["batch_size"]
    result = cli("eval", point, "--n", "300", "--draws", "1", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["solver"] == "euler" and record["steps"] == 100 and record["n"] == 300
    assert math.isfinite(record["w2"]) and record["npe"] is not None and record["npe"] >= 0
    assert "tong-" in record["data"] and "10000 rows" in record["data"]


def test_a_run_with_the_pair_source_resumes_bitwise(tmp_path, isolated_run_root):
    """The moons source is drawn from its own generator, saved in the checkpoint: 1 epoch +
    a resume to 2 trains exactly what 2 epochs in one go do."""
    config = _grid("tong2023_2d").point("icfm-tong-pair-moons-to-tong-pair-8gaussians-s42").config
    config_file = tmp_path / "point.yaml"
    config_file.write_text(yaml.safe_dump({**config.to_dict(), "run_name": None, "epochs": 2,
                                           "batch_size": 1000, "checkpoint_interval": 0}))
    flags = ("--config", config_file, "--wandb-mode", "disabled", "--plain")
    assert cli("train", *flags, "--run-name", "whole").exit_code == 0
    assert cli("train", *flags, "--run-name", "split", "--epochs", "1").exit_code == 0
    resumed = cli("resume", "split", "--epochs", "2", "--wandb-mode", "disabled", "--plain")
    assert resumed.exit_code == 0, resumed.stderr
    whole, split = load(isolated_run_root / "whole" / "last.pt"), load(isolated_run_root / "split" / "last.pt")
    assert split["config"]["source"] == "tong-pair-moons" and split["global_step"] == 20
    assert_same_state(whole, split)


@pytest.mark.slow
def test_the_reproduction_script_trains_scores_tabulates_and_skips_what_is_done(tmp_path,
                                                                                isolated_run_root):
    """scripts/reproduce_tong2023.sh on a 2-point grid of the published protocol (1 epoch)."""
    import os
    import subprocess
    import sys

    spec = yaml.safe_load((REPO_ROOT / "examples" / "tong2023_2d.yaml").read_text())
    spec.update(group="tong-tiny", base={**spec["base"], "epochs": 1}, exclude=spec["exclude"],
                grid={**spec["grid"], "flow": ["icfm"], "sigma": [0.1], "seed": [42, 43],
                      "dataset": ["tong-pair-8gaussians"], "source": ["tong-pair-moons"]})
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "SIZES": "64 128", "PARALLEL": "1", "EVAL_PARALLEL": "2",
           "FLOWCTL": f"{sys.executable} -m study.cli.app"}

    def reproduce() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", REPO_ROOT / "scripts" / "reproduce_tong2023.sh", grid],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)

    first = reproduce()
    assert first.returncode == 0, first.stderr
    saved = sorted(p.name for p in (out / "evals").iterdir())
    assert saved == [f"icfm-tong-pair-moons-to-tong-pair-8gaussians-s{s}-n{n}.json"
                     for s in (42, 43) for n in (128, 64)]
    assert json.loads((out / "evals" / saved[0]).read_text())["n"] == 128
    for table in ("w2-n64.md", "npe-n64.md", "w2-n128.md", "npe-n128.md"):
        text = (out / table).read_text()
        assert "icfm" in text and "tong-pair-8gaussians" in text and "±" in text, text
    table = (out / "table.md").read_text()  # scripts/tong2023_table.py: both sizes, 2 seeds
    assert "### n = 64 test points" in table and "### n = 128 test points" in table, table
    assert "| published protocol | icfm | W2 |" in table and "(2)" in table, table
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    second = reproduce()
    assert second.returncode == 0, second.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == written


def test_the_table_script_parses_every_flow_name_and_a_grid_prefix():
    import importlib.util

    from study.flow_matching.config import FLOW_NAMES

    spec = importlib.util.spec_from_file_location("tong2023_table",
                                                  REPO_ROOT / "scripts" / "tong2023_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    for flow in FLOW_NAMES:
        for prefix in (None, "defaults"):
            name = f"{prefix + '-' if prefix else ''}{flow}-gaussian-to-tong-moons-s42-n1000.json"
            match = table.NAME.match(name)
            assert match and (match["prefix"], match["flow"], match["source"]) == (
                prefix, flow, "gaussian"), name


def test_the_table_script_sets_each_cell_beside_the_published_one(tmp_path):
    """scripts/tong2023_table.py: mean ± std over seeds per flow and task, and where the mean
    lies against [SF]2M's mean ± std (I-CFM N -> moons: 0.178 ± 0.014)."""
    import subprocess
    import sys

    evals = tmp_path / "evals"
    evals.mkdir()
    for seed, w2 in ((42, 0.15), (43, 0.16), (44, 0.17)):  # mean 0.160: below 0.164
        (evals / f"icfm-gaussian-to-tong-moons-s{seed}-n10000.json").write_text(
            json.dumps({"w2": w2, "npe": 0.9}))
    (evals / "otcfm-gaussian-to-tong-scurve-s42-n10000.json").write_text(
        json.dumps({"w2": 0.15, "npe": 0.02}))  # inside 0.144 ± 0.028
    (evals / "otcfm-sampled-gaussian-to-tong-scurve-s42-n10000.json").write_text(
        json.dumps({"w2": 0.25, "npe": 0.02}))  # the runner's OT-CFM: same published cell
    (evals / "defaults-icfm-gaussian-to-tong-moons-s42-n10000.json").write_text(
        json.dumps({"w2": 0.5, "npe": 3.0}))  # another grid: no published comparison
    out = subprocess.run([sys.executable, REPO_ROOT / "scripts" / "tong2023_table.py", tmp_path],
                         capture_output=True, text=True, check=True).stdout
    rows = {tuple(cell.strip() for cell in line.split("|")[1:4]): line for line in out.splitlines()
            if line.startswith("| ") and "grid" not in line}
    assert "0.160 ± 0.010 (3) vs 0.178 ± 0.014 **below**" in rows[("published protocol", "icfm", "W2")]
    assert "0.150 (1) vs 0.144 ± 0.028 **within**" in rows[("published protocol", "otcfm", "W2")]
    assert "0.250 (1) vs 0.144 ± 0.028 **above**" in rows[("published protocol", "otcfm-sampled", "W2")]
    assert "0.500 (1) |" in rows[("defaults", "icfm", "W2")] and " vs " not in rows[
        ("defaults", "icfm", "W2")]
