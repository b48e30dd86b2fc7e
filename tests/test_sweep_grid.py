"""Grid files -> points (product, include, exclude, names), identity and point states. No processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from study.errors import UsageError
from study.flow_matching.config import TrainingConfig
from study.runs.status import RunStatusFile
from study.sweep.grid import load_grid
from study.sweep.identity import config_hash, identity_diff
from study.sweep.point_files import last_error_line, record_failure
from study.sweep.state import read_point_state, summary_line
from tests.support.helpers import REPO_ROOT


def grid_file(tmp_path: Path, spec: dict, name: str = "ablation.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


BASE = {"width": 16, "depth": 2, "epochs": 3}


def test_product_in_file_order_with_default_names_and_group_from_the_stem(tmp_path):
    grid = load_grid(grid_file(tmp_path, {"base": BASE, "grid": {
        "flow": ["icfm", "otcfm"], "dataset": ["moons", "8gaussians"], "seed": [0, 1]}}))
    assert grid.group == "ablation"
    assert len(grid.points) == 8
    assert [p.name for p in grid.points[:3]] == [
        "mlp-icfm-moons-none-s0", "mlp-icfm-moons-none-s1", "mlp-icfm-8gaussians-none-s0"]
    point = grid.point("mlp-otcfm-8gaussians-none-s1")
    assert (point.config.flow, point.config.dataset, point.config.seed) == ("otcfm", "8gaussians", 1)
    assert point.config.width == 16 and point.config.group == "ablation"
    assert point.config.run_name == point.name
    assert point.values == {"flow": "otcfm", "dataset": "8gaussians", "seed": 1}


def test_a_grid_key_with_one_value_is_in_the_name_so_adding_a_seed_adds_points(tmp_path):
    one = load_grid(grid_file(tmp_path, {"base": BASE, "grid": {"seed": [0]}}))
    two = load_grid(grid_file(tmp_path, {"base": BASE, "grid": {"seed": [0, 1]}}))
    assert [p.name for p in one.points] == ["mlp-icfm-moons-none-s0"]
    assert [p.name for p in two.points] == ["mlp-icfm-moons-none-s0", "mlp-icfm-moons-none-s1"]
    assert one.points[0].config_hash == two.points[0].config_hash


def test_include_exclude_template_and_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**BASE, "lr": 0.002}))
    grid = load_grid(grid_file(tmp_path, {
        "name": "{flow}-lr{lr}-s{seed}", "group": "g1", "base": "base.yaml",
        "grid": {"flow": ["icfm", "otcfm"], "seed": [0, 1]},
        "exclude": [{"flow": "otcfm", "seed": 1}],
        "include": [{"flow": "fm", "seed": 7, "lr": 0.01}, {"flow": "icfm", "seed": 0}]}))
    assert [p.name for p in grid.points] == [
        "icfm-lr0.002-s0", "icfm-lr0.002-s1", "otcfm-lr0.002-s0", "fm-lr0.01-s7"]
    assert grid.group == "g1" and grid.point("fm-lr0.01-s7").config.lr == 0.01


@pytest.mark.parametrize("spec, fragment", [
    ({"grid": {"flw": ["icfm"]}}, "unknown key 'flw' in grid"),
    ({"grid": {"seed": 3}}, "grid.seed in"),
    ({"grid": {"run_name": ["a"]}}, "a sweep sets run_name itself"),
    ({"grid": {"flow": ["nope"]}}, "unknown flow 'nope'"),
    ({"grids": {}}, "unknown key 'grids' in grid"),
    ({"base": "missing.yaml"}, "cannot read base config"),
    ({"grid": {"seed": [0]}, "exclude": [{"seed": 0}]}, "has no points"),
    ({"grid": {"lr": [0.001, 0.002]}, "name": "{name}"}, "would both be run mlp-icfm-moons-none"),
    ({"grid": {"seed": [0]}, "name": "{nope}"}, "template"),
    ({"grid": {"seed": [0]}, "name": "a/{seed}"}, "must be a single folder name"),
])
def test_bad_grids_are_one_line_usage_errors(tmp_path, spec, fragment):
    with pytest.raises(UsageError, match=None) as error:
        load_grid(grid_file(tmp_path, spec))
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_identity_ignores_harmless_keys_and_resolves_network():
    base = {"arch": "mlp", "lr": 0.001, "epochs": 5}
    assert config_hash(base) == config_hash({**base, "epochs": 50, "patience": 0,
                                             "group": "x", "run_name": "y", "network": "mlp"})
    assert config_hash(base) != config_hash({**base, "lr": 0.002})
    full = TrainingConfig(**base).to_dict()
    assert identity_diff({**full, "network": "mlp"}, full) == []
    assert identity_diff(full, {**full, "lr": 0.002}) == ["lr: 0.001 in the run, 0.002 in the grid"]
    # A run written before `ema_warmup` existed trained without it: not this grid's run.
    legacy = {k: v for k, v in full.items() if k != "ema_warmup"}
    assert identity_diff(legacy, full) == ["ema_warmup: False in the run, True in the grid"]


def test_states_from_run_json_and_the_sweeps_failure_record(tmp_path, isolated_run_root):
    grid = load_grid(grid_file(tmp_path, {"base": BASE, "grid": {"seed": [0, 1, 2, 3]}}))
    p0, p1, p2, p3 = grid.points
    assert read_point_state(p0).state == "pending"

    def write(point, **fields):
        folder = isolated_run_root / point.name
        folder.mkdir(parents=True, exist_ok=True)
        RunStatusFile(folder).update(run_name=point.name, config=point.config.to_dict(), **fields)
        (folder / "last.pt").write_bytes(b"x")
        return folder

    write(p0, status="finished", total_epochs=3, epoch=3)
    write(p1, status="finished", total_epochs=2, epoch=2)  # the grid now asks for 3
    write(p2, status="running", pid=2**22 + 12345, host=__import__("socket").gethostname())
    folder = write(p3, status="preempted")
    record_failure(folder, exit_code=2, error="cannot read dataset x")
    states = [read_point_state(p) for p in grid.points]
    assert [s.state for s in states] == ["finished", "pending", "crashed", "failed"]
    assert states[1].detail == "extend to 3 epochs" and states[3].error == "cannot read dataset x"
    assert summary_line(states) == "4 points: 1 finished, 1 pending, 1 crashed, 1 failed"
    RunStatusFile(folder).update(status="preempted")  # a later run.json wins over the record
    assert read_point_state(p3).state == "preempted"


def test_a_run_with_another_config_under_the_points_name_is_a_conflict(tmp_path, isolated_run_root):
    grid = load_grid(grid_file(tmp_path, {"base": BASE, "grid": {"seed": [0]}}))
    point = grid.points[0]
    folder = isolated_run_root / point.name
    folder.mkdir(parents=True)
    RunStatusFile(folder).update(status="finished", config={**point.config.to_dict(), "lr": 0.5})
    assert read_point_state(point).conflict is None  # no checkpoint: nothing to lose
    (folder / "best.pt").write_bytes(b"x")
    assert read_point_state(point).conflict == f"lr: 0.5 in the run, {point.config.lr} in the grid"


def test_last_error_line_reads_only_the_attempts_part_of_the_log(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("error: old failure\n")
    offset = log.stat().st_size
    with open(log, "a") as handle:
        handle.write("training...\nerror: cannot read dataset /x.pt: No such file\n")
    assert last_error_line(log, offset) == "cannot read dataset /x.pt: No such file"
    assert last_error_line(log, log.stat().st_size) is None


def test_the_example_grid_is_the_studys_comparison_in_small():
    grid = load_grid(REPO_ROOT / "examples" / "study_small.yaml")
    assert grid.group == "study-small" and len(grid.points) == 8
    assert {(p.config.flow, p.config.dataset) for p in grid.points} == {
        (f, d) for f in ("icfm", "otcfm") for d in ("moons", "8gaussians")}
    assert {p.config.seed for p in grid.points} == {0, 1}
    json.dumps([p.config.to_dict() for p in grid.points])  # plain data, as sweep.yaml needs


def test_a_lock_is_live_only_while_a_process_holds_its_flock(tmp_path):
    """A left-over lock file naming a live pid (here: our own, as after a container restart
    reuses pids) is not a live trainer; the flock of a real holder is; another host's is."""
    import os
    import socket
    import subprocess
    import sys

    from study.sweep.state import lock_is_live

    folder = tmp_path / "run"
    folder.mkdir()
    assert not lock_is_live(folder)  # no lock file
    lock_file = folder / "run.lock"
    lock_file.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "flock": True}))
    assert not lock_is_live(folder)
    lock_file.write_text(json.dumps({"pid": 1, "host": "another-host", "flock": True}))
    assert lock_is_live(folder)
    lock_file.unlink()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib\nfrom study.runs.lock import RunLock\n"
         f"RunLock(pathlib.Path({str(folder)!r}), 'r').acquire()\nprint('held', flush=True)\n"
         "sys.stdin.read()"], cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_is_live(folder)
    finally:
        holder.communicate("", timeout=30)
    assert not lock_is_live(folder)
