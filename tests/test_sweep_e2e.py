"""`flowctl sweep` with real processes and real signals: SIGKILL mid-sweep, two sweeps at
once, a failing point, a grown grid, a graceful SIGTERM. Every point trains in its own
`flowctl train` child; the tests read the run folders (never sleep to synchronise)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import (
    REPO_ROOT,
    CheckpointSteps,
    assert_same_state,
    cli,
    load,
    metrics_rows,
    spawn,
    vectors_file,
    wait_for,
)

pytestmark = pytest.mark.slow
SWEEP_TIMEOUT_S = 300


def write_grid(tmp_path: Path, grid: dict, *, epochs: int, **extra) -> Path:
    data = tmp_path / "data" / "vectors.pt"
    if not data.exists():
        data.parent.mkdir()
        vectors_file(data.parent).rename(data)
    base = {"dataset": str(data), "batch_size": 64, "width": 16, "depth": 2, "warmup_steps": 5,
            "epochs": epochs, "patience": 0, "checkpoint_interval": 0}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": base, "grid": grid, **extra}))
    return path


def start_sweep(grid: Path, *args: str):
    return spawn("sweep", grid, "--wandb-mode", "disabled", "--plain", *args)


def finish(process, timeout: float = SWEEP_TIMEOUT_S) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def run_json(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None


def digest(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in ("best.pt", "last.pt", "metrics.csv", "run.json")}


def training_starts(folder: Path) -> list[int]:
    """The step each training process of this point started from (from train.log)."""
    text = (folder / "train.log").read_text()
    return [int(step) for step in re.findall(rf"^training {folder.name}: step (\d+)/", text, re.M)]


def attempts(folder: Path) -> int:
    return (folder / "train.log").read_text().count("==== flowctl sweep: attempt")


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children run in their own sessions)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def freeze_when(condition, launcher) -> None:
    """Stop the launcher and every child (SIGSTOP) at a moment `condition()` holds, checked
    again once everything is frozen, so nothing moves between the check and what follows."""
    while True:
        wait_for(condition, timeout=SWEEP_TIMEOUT_S, process=launcher, what="the moment to kill")
        launcher.send_signal(signal.SIGSTOP)  # first: no new children from here on
        frozen = descendants(launcher.pid)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        if condition():
            return
        for pid in [*frozen, launcher.pid]:
            os.kill(pid, signal.SIGCONT)


def reference(tmp_path: Path, folder: Path) -> Path:
    """The same point trained without interruption, in another root."""
    root = tmp_path / "reference"
    result = cli("train", "--config", folder / "sweep.yaml", "--ckpt-dir", root,
                 "--wandb-mode", "disabled", "--plain")
    assert result.exit_code == 0, result.stderr
    return root / folder.name


def test_sigkill_mid_sweep_then_rerun_finishes_each_point_once_and_exactly(tmp_path, isolated_run_root):
    grid = write_grid(tmp_path, {"flow": ["icfm", "otcfm"], "seed": [0, 1]}, epochs=40)
    names = [f"mlp-{flow}-vectors-none-s{seed}" for flow in ("icfm", "otcfm") for seed in (0, 1)]
    folders = [isolated_run_root / name for name in names]
    steps = CheckpointSteps()

    def midway(state: dict | None, folder: Path) -> bool:
        step = steps(folder / "last.pt") if state and state["status"] == "running" else None
        return step is not None and step < 40 * 9

    def one_done_one_midway() -> bool:
        states = [run_json(folder) for folder in folders]
        done = any(s and s["status"] == "finished" for s in states)
        return done and any(midway(s, f) for s, f in zip(states, folders, strict=True))

    launcher = start_sweep(grid, "--parallel", "2")
    freeze_when(one_done_one_midway, launcher)
    for pid in descendants(launcher.pid):
        os.kill(pid, signal.SIGKILL)
    launcher.kill()
    launcher.communicate(timeout=60)

    finished = [f for f in folders if (run_json(f) or {}).get("status") == "finished"]
    interrupted = {f: load(f / "last.pt")["global_step"] for f in folders
                   if f not in finished and (f / "last.pt").exists()}
    assert finished and interrupted, "the kill should land between two points' ends"
    before = {f: digest(f) for f in finished}

    code, out, err = finish(start_sweep(grid, "--parallel", "2"))
    assert code == 0, err
    assert out.strip().endswith("4 points: 4 finished")
    for folder in finished:  # untouched: not even launched again
        assert digest(folder) == before[folder]
        assert attempts(folder) == 1 and training_starts(folder) == [0]
    for folder, step in interrupted.items():  # resumed where last.pt was, never from 0 again
        assert training_starts(folder) == [0, step]
        uninterrupted = reference(tmp_path, folder)
        assert_same_state(load(uninterrupted / "last.pt"), load(folder / "last.pt"))
        assert_same_state(load(uninterrupted / "best.pt"), load(folder / "best.pt"))
        assert metrics_rows(folder) == metrics_rows(uninterrupted)
    for folder in folders:
        assert run_json(folder)["status"] == "finished"


def test_two_sweeps_started_at_once_train_each_point_exactly_once_and_a_new_seed_only_it(
        tmp_path, isolated_run_root):
    grid = write_grid(tmp_path, {"seed": [0, 1, 2]}, epochs=20)
    first, second = start_sweep(grid, "--parallel", "2"), start_sweep(grid, "--parallel", "2")
    results = [finish(first), finish(second)]
    for code, out, err in results:
        assert code == 0, err
        assert out.strip().endswith("3 points: 3 finished")
    assert "running elsewhere" in results[0][1] + results[1][1]  # they did meet
    for seed in (0, 1, 2):
        folder = isolated_run_root / f"mlp-icfm-vectors-none-s{seed}"
        assert training_starts(folder) == [0], (folder / "train.log").read_text()
        log = (folder / "train.log").read_text()
        assert log.count(f"run {folder.name}: finished") == 1
        assert run_json(folder)["resumed_from_step"] is None

    # Adding a seed to the grid trains only the new point; the others are not touched.
    old = [isolated_run_root / f"mlp-icfm-vectors-none-s{seed}" for seed in (0, 1, 2)]
    before = {folder: (digest(folder), attempts(folder)) for folder in old}
    grid = write_grid(tmp_path, {"seed": [0, 1, 2, 3]}, epochs=20)
    code, out, err = finish(start_sweep(grid, "--parallel", "2"))
    assert code == 0, err
    started = [line.split()[1] for line in out.splitlines() if line.startswith("started ")]
    assert started == ["mlp-icfm-vectors-none-s3"], out
    assert {folder: (digest(folder), attempts(folder)) for folder in old} == before  # not launched


def test_a_failing_point_is_reported_the_others_finish_and_retry_failed_reruns_only_it(
        tmp_path, isolated_run_root):
    missing = tmp_path / "later" / "late.pt"
    grid = write_grid(tmp_path, {"seed": [0, 1]}, epochs=3,
                      include=[{"dataset": str(missing), "seed": 0}])
    code, out, err = finish(start_sweep(grid, "--parallel", "2"))
    assert code == 1
    assert "1 of 3 points failed: mlp-icfm-late-none-s0" in err and err.count("\n") == 1
    assert "3 points: 2 finished, 1 failed" in out
    status = json.loads(cli("sweep", "status", grid, "--json").stdout)
    failed = [p for p in status["points"] if p["state"] == "failed"]
    assert [p["point"] for p in failed] == ["mlp-icfm-late-none-s0"]
    assert str(missing) in failed[0]["error"] and "\n" not in failed[0]["error"]
    assert json.loads(cli("list-runs", "--json", "--status", "failed").stdout)[0]["run_name"] == \
        "mlp-icfm-late-none-s0"

    done = [isolated_run_root / f"mlp-icfm-vectors-none-s{seed}" for seed in (0, 1)]
    before = {f: digest(f) for f in done}
    failed_folder = isolated_run_root / "mlp-icfm-late-none-s0"
    code, out, err = finish(start_sweep(grid))  # without --retry-failed: not re-run
    assert code == 1 and attempts(failed_folder) == 1

    missing.parent.mkdir()
    vectors_file(missing.parent).rename(missing)
    code, out, err = finish(start_sweep(grid, "--retry-failed"))
    assert code == 0, err
    assert "retrying mlp-icfm-late-none-s0" in out and out.count("retrying") == 1
    assert "started" not in out and "resuming" not in out
    assert {f: digest(f) for f in done} == before
    assert run_json(failed_folder)["status"] == "finished" and attempts(failed_folder) == 2


def test_the_example_grid_runs_and_compares(tmp_path, isolated_run_root):
    """examples/study_small.yaml as shipped is 8 points; its 4 on moons run end to end (1 epoch
    each instead of 4, the rest as shipped), then the results table by flow and dataset with
    both seeds in every row."""
    shipped_path = REPO_ROOT / "examples" / "study_small.yaml"
    shipped = shipped_path.read_text()
    printed = cli("sweep", shipped_path, "--launcher", "print", "--wandb-mode", "disabled")
    assert printed.exit_code == 0 and printed.stdout.count("flowctl train") == 8, printed.stdout
    assert "  epochs: 4\n" in shipped and "  dataset: [moons, 8gaussians]\n" in shipped
    grid = tmp_path / "study_small.yaml"
    grid.write_text(shipped.replace("  epochs: 4\n", "  epochs: 1\n")
                    .replace("  dataset: [moons, 8gaussians]\n", "  dataset: [moons]\n"))
    code, out, err = finish(start_sweep(grid, "--parallel", "2"))
    assert code == 0, err
    assert out.strip().endswith("4 points: 4 finished")
    table = json.loads(cli("compare", "--group", "study-small", "--by", "flow,dataset",
                           "--json").stdout)
    assert {(row["flow"], row["dataset"]) for row in table["rows"]} == {
        ("icfm", "moons"), ("otcfm", "moons")}
    assert all(row["n"] == 2 and row["std"] is not None for row in table["rows"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_stops_children_gracefully_and_the_next_sweep_continues(
        tmp_path, isolated_run_root, sig):
    # Epochs enough that no point can finish before the signal; the next sweep then asks for
    # fewer in total (epochs is a harmless key: the same points), so it ends.
    # SIGTERM stops two children; SIGINT's case (one child) checks what differs: the signal.
    seeds = [0, 1] if sig == signal.SIGTERM else [0]
    grid = write_grid(tmp_path, {"seed": seeds}, epochs=100_000)
    folders = [isolated_run_root / f"mlp-icfm-vectors-none-s{seed}" for seed in seeds]
    launcher = start_sweep(grid, "--parallel", "2")
    wait_for(lambda: all((run_json(f) or {}).get("epoch", 0) >= 1 for f in folders),
             timeout=SWEEP_TIMEOUT_S, process=launcher, what="every point past epoch 1")
    launcher.send_signal(sig)  # SIGINT: what Ctrl-C sends (to the launcher's group only:
    code, out, err = finish(launcher)  # the children run in their own sessions)
    assert code == 128 + sig and f"sweep stopped by {signal.Signals(sig).name}" in err
    stopped_at = {}
    for folder in folders:
        assert run_json(folder)["status"] == "preempted"
        assert f"stopped by {signal.Signals(sig).name}" in (folder / "train.log").read_text()
        stopped_at[folder] = load(folder / "last.pt")["global_step"]
    assert ("2 points: 2 preempted" if len(seeds) == 2 else "1 point: 1 preempted") in out
    if sig == signal.SIGINT:
        return  # what follows a stop does not depend on its signal: SIGTERM's case checks it
    grid = write_grid(tmp_path, {"seed": [0, 1]},
                      epochs=max(step for step in stopped_at.values()) // 9 + 3)
    code, out, err = finish(start_sweep(grid, "--parallel", "2"))
    assert code == 0, err
    for folder in folders:
        assert training_starts(folder) == [0, stopped_at[folder]]
        assert run_json(folder)["status"] == "finished"


# On the children's PYTHONPATH: a `flowctl train` child announces itself and waits in its
# interpreter's start-up, before flowctl can install a signal handler.
HOLD_IN_START_UP = """
import os, sys, time
held = os.environ.get("FLOWCTL_TEST_HOLD")
if held and "train" in sys.orig_argv:
    open(held, "w").close()
    while True:  # until a signal's default action ends the process
        time.sleep(0.05)
"""


def test_a_stop_while_a_point_is_starting_leaves_it_pending_not_failed(tmp_path, isolated_run_root):
    # The sweep's forwarded SIGTERM kills a child still starting (exit -15, nothing trained):
    # the point is not failed, and the same command runs it without --retry-failed.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_IN_START_UP)
    held = tmp_path / "held"
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    grid = write_grid(tmp_path, {"seed": [0]}, epochs=2)
    launcher = spawn("sweep", grid, "--wandb-mode", "disabled", "--plain",
                     env={"PYTHONPATH": path, "FLOWCTL_TEST_HOLD": str(held)})
    wait_for(held.exists, timeout=SWEEP_TIMEOUT_S, process=launcher, what="the child held in start-up")
    launcher.send_signal(signal.SIGTERM)
    code, out, err = finish(launcher)
    assert code == 128 + signal.SIGTERM, err
    assert "stopped mlp-icfm-vectors-none-s0 while it was starting (exit -15)" in out
    assert "failed" not in out + err
    code, out, err = finish(start_sweep(grid))  # the same command, no --retry-failed
    assert code == 0, err
    assert "started mlp-icfm-vectors-none-s0" in out
    assert run_json(isolated_run_root / "mlp-icfm-vectors-none-s0")["status"] == "finished"


def test_a_point_locked_by_a_silent_trainer_on_another_host_is_reported_not_waited_on_forever(
        tmp_path, isolated_run_root):
    """Another host's lock cannot be checked from here: while its run.json is fresh the sweep
    waits; once it is stale (`crashed`) the sweep tries to take the point over, the lock
    still refuses, and after a few tries the point is `failed` with the lock's own message."""
    from datetime import datetime, timedelta, timezone

    grid = write_grid(tmp_path, {"seed": [0]}, epochs=2)
    folder = isolated_run_root / "mlp-icfm-vectors-none-s0"
    folder.mkdir(parents=True)
    (folder / "run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere-host", "flock": True}))
    stale = (datetime.now(timezone.utc) - timedelta(minutes=20)).isoformat()
    from study.sweep.grid import load_grid

    config = load_grid(Path(grid)).points[0].config.to_dict()  # the point's own config
    (folder / "run.json").write_text(json.dumps({
        "run_name": folder.name, "status": "running", "config": config, "pid": 1,
        "host": "elsewhere-host", "updated_at": stale}))
    code, out, err = finish(start_sweep(grid))
    assert code == 1, err
    error = json.loads(cli("sweep", "status", grid, "--json").stdout)["points"][0]["error"]
    assert "in use by pid 1 on host elsewhere-host" in error and "gave up after 5 launches" in error
    assert attempts(folder) == 5
