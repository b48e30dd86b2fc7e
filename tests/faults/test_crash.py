"""Crashes: SIGKILL at random moments and at every point of a checkpoint write.

A killed run must leave best.pt and last.pt loadable (each the previous or the new complete
version), its temp files must be removed by the next start, and after `flowctl resume` the
run must end bit-identical to a run that never stopped (weights, EMA, optimizer, best.pt,
metrics.csv).
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

from tests.support.helpers import (
    assert_same_state,
    cli,
    load,
    metrics_rows,
    run_flags,
    run_json,
    vectors_file,
)
from tests.support.kill_loop import checkpoint_problems, kill_resume_loop

KILLS_PER_RUN = 6



def train_reference(name: str, args: list[str]) -> None:
    result = cli("train", "--run-name", name, *args)
    assert result.exit_code == 0, result.stderr


def assert_same_run(reference: Path, resumed: Path) -> None:
    assert_same_state(load(reference / "last.pt"), load(resumed / "last.pt"))
    assert_same_state(load(reference / "best.pt"), load(resumed / "best.pt"))
    assert metrics_rows(resumed) == metrics_rows(reference)


@pytest.mark.slow
@pytest.mark.parametrize("flow, seed", [("icfm", 20240601), ("otcfm", 20240602)])
def test_random_sigkills_during_constant_writes_lose_and_corrupt_nothing(
        tmp_path, isolated_run_root, zygote, flow, seed):
    """6 SIGKILLs at seeded random moments of one run (`--save-every 1`: a write is almost
    always in progress), `flowctl resume` after each, every .pt checked after each kill."""
    args = run_flags(vectors_file(tmp_path), "--flow", flow, "--save-every", "1")
    train_reference("reference", args)
    run = isolated_run_root / "killed"
    report = kill_resume_loop(zygote, run, ["train", "--run-name", "killed", *args],
                              kills=KILLS_PER_RUN, rng=random.Random(seed), env=dict(os.environ))
    assert report.kills == KILLS_PER_RUN, f"the run finished after {report.kills} kills"
    assert report.resumes + report.restarts == KILLS_PER_RUN
    assert report.corrupted == []
    assert report.temps_not_removed == [], "a killed writer's temp file survived the next start"
    assert report.final_returncode == 0, report.final_stderr
    assert report.steps_at_kill == sorted(report.steps_at_kill), "a resume went backwards"
    assert_same_run(isolated_run_root / "reference", run)
    assert run_json(run)["status"] == "finished"
    assert not list(run.glob(".*.tmp-*"))


def test_temp_files_left_by_a_killed_writer_are_removed_on_the_next_start(
        tmp_path, isolated_run_root):
    args = run_flags(vectors_file(tmp_path), epochs=1)
    train_reference("r", args)
    run = isolated_run_root / "r"
    leftovers = [run / ".last.pt.tmp-4000001", run / ".best.pt.tmp-4000002",
                 run / ".run.json.tmp-4000003", run / ".metrics.csv.tmp-4000004"]
    for path in leftovers:
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    result = cli("resume", "r", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in leftovers if p.exists()] == []
    assert checkpoint_problems(run) == []


# -- SIGKILL at each step of write_atomic ------------------------------------------------------
def kill_self_at(call: str, nth: int, before: bool = False) -> None:
    """Child setup hook: SIGKILL this process just before or after the `nth` `os.<call>(src,
    dst)` whose dst is a checkpoint or a checkpoint's temp file. The kill is real; only its
    moment is chosen."""
    real = getattr(os, call)
    seen = 0

    def wrapper(src, dst, *args, **kwargs):
        nonlocal seen
        name = Path(os.fspath(dst)).name
        hit = name.endswith(".pt") or ".pt.tmp-" in name
        seen += hit
        if hit and seen == nth and before:
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(src, dst, *args, **kwargs)
        if hit and seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(os, call, wrapper)


# val/loss improves every epoch here, so each epoch end writes both files: temp, fsync,
# os.replace onto the first name, a copy of it into the second name's temp, os.replace onto
# the second name, fsync of the folder. Crash points count those calls from the start.
EPOCHS = 4
FINAL_REPLACES = 2 * EPOCHS  # replace calls up to the end of the final epoch's save


@pytest.mark.parametrize("call, nth, before", [
    pytest.param("replace", FINAL_REPLACES - 1, True, id="temp-written-nothing-in-place"),
    pytest.param("replace", 3, False, id="first-in-place-second-old-mid-run"),
    pytest.param("replace", FINAL_REPLACES - 1, False, id="first-in-place-second-old-final"),
    pytest.param("replace", FINAL_REPLACES, True, id="second-temp-copied-final"),
    pytest.param("replace", FINAL_REPLACES, False, id="both-in-place-folder-not-synced"),
])
def test_sigkill_at_each_point_of_a_checkpoint_write(tmp_path, isolated_run_root, flowctl,
                                                     call, nth, before):
    # lr 1e-3: the val loss improves at every one of these few epochs (a best.pt write each)
    args = run_flags(vectors_file(tmp_path), "--lr", "1e-3", epochs=EPOCHS)
    train_reference("reference", args)
    reference = isolated_run_root / "reference"
    val_best = [float(r["val/best_loss"]) for r in metrics_rows(reference) if r["val/best_loss"]]
    assert len(set(val_best)) == EPOCHS, "expected an improvement (a best.pt write) every epoch"

    child = flowctl("train", "--run-name", "crashed", *args,
                    setup="tests.faults.test_crash:kill_self_at",
                    setup_args={"call": call, "nth": nth, "before": before})
    assert child.wait(120) == -signal.SIGKILL, child.stderr
    run = isolated_run_root / "crashed"
    assert checkpoint_problems(run) == []

    result = cli("resume", "crashed")
    assert result.exit_code == 0, result.stderr
    assert_same_run(reference, run)
