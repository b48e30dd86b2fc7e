"""Several processes with torchrun (gloo on the CPU), started by `flowctl train --nproc 2`
as a real subprocess: the same global batches as one process, exact resume after signals
and after a rank dies, resume across world sizes without repeating or skipping a sample,
and only rank 0 writing files."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from tests.support.distributed_runs import EPOCHS, finish, reference_runs, run_args, with_hooks
from tests.support.helpers import (
    CheckpointSteps,
    assert_same_state,
    cli,
    load,
    metrics_rows,
    run_json,
    spawn,
    wait_for,
)

pytestmark = pytest.mark.slow
RUN_FILES = {"best.pt", "last.pt", "metrics.csv", "run.json"}


def sample_log(folder: Path) -> dict[str, str]:
    return with_hooks(FLOWCTL_SAMPLE_LOG=folder)


def gloo_threads_left(folder: Path) -> dict[str, list[str]]:
    """{file: gloo's threads still alive after that worker's `distributed.shutdown()`}; both
    workers must have written theirs, and had gloo threads before it (so that the names
    checked are the ones torch gives them). Any left could abort the process at exit."""
    def gloo(path: Path) -> list[str]:
        return [name for name in path.read_text().split() if "gloo" in name]

    for rank in (0, 1):
        assert gloo(folder / f"threads-before-rank{rank}.txt"), "no gloo thread seen while in the group"
    return {f"threads-rank{rank}.txt": gloo(folder / f"threads-rank{rank}.txt") for rank in (0, 1)}


def parent_of(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = parent_of(pid)
    return False


def workers_of(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the live workers under this test's own launcher (tests run in
    parallel: another test's workers must never be touched)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not descends_from(int(entry.name), launcher_pid):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0")
                           if b"=" in item)
        except OSError:
            continue
        if b"study.cli.app" in cmdline and b"RANK" in environ:
            found[int(environ[b"RANK"])] = int(entry.name)
    return found


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs on 1 and 2 processes and their sample logs (built once per session)."""
    return reference_runs(tmp_path_factory)


def steps_of(log_dir: Path) -> list[list[int]]:
    """The global row ids trained at each step, all ranks' slices joined."""
    ranks = sorted(log_dir.glob("rank*.txt"))
    lines = [path.read_text().splitlines() for path in ranks]
    assert len({len(part) for part in lines}) == 1, "every rank trains every step"
    return [sum((list(map(int, part[i].split())) for part in lines), []) for i in range(len(lines[0]))]


def test_two_processes_train_what_one_does(references):
    root = references["root"]
    one, two = load(root / "one" / "last.pt"), load(root / "two" / "last.pt")
    assert two["world_size"] == 2 and one["global_step"] == two["global_step"] == EPOCHS * 9
    for key in ("model_state_dict", "ema_shadow"):
        for name, tensor in one[key].items():
            torch.testing.assert_close(two[key][name], tensor, rtol=0, atol=1e-6)
    assert steps_of(references["logs"]["two"]) == steps_of(references["logs"]["one"])
    assert gloo_threads_left(references["logs"]["two"]) == {"threads-rank0.txt": [],
                                                              "threads-rank1.txt": []}
    # Only rank 0 wrote: the run files and nothing else, each row once, rank 0's pid.
    assert {p.name for p in (root / "two").iterdir()} == RUN_FILES
    rows = metrics_rows(root / "two")
    assert [r["step"] for r in rows] == [r["step"] for r in metrics_rows(root / "one")]
    for mine, theirs in zip(rows, metrics_rows(root / "one"), strict=True):
        for key in ("train/loss", "val/loss"):
            if mine[key]:
                assert float(mine[key]) == pytest.approx(float(theirs[key]), rel=1e-5)


def agent_of(launcher_pid: int) -> int:
    """The torchrun agent started by a `flowctl train --nproc` process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == launcher_pid and b"torch.distributed.run" in cmdline:
                return int(entry.name)
    raise AssertionError(f"no torchrun agent under pid {launcher_pid}")


def stop_when(process, run: Path, sig: int, *, after_step: int, to_agent: bool = False) -> None:
    """Send `sig` once the run has a last.pt past `after_step`."""
    steps = CheckpointSteps()

    def ready() -> bool:
        step = steps(run / "last.pt")
        return step is not None and step > after_step

    wait_for(ready, process=process, what=f"a checkpoint past step {after_step}", timeout=180)
    os.kill(agent_of(process.pid) if to_agent else process.pid, sig)


def test_signals_and_world_sizes_resume_without_repeating_or_skipping_a_sample(
        references, tmp_path, isolated_run_root):
    """2 processes stopped by SIGTERM to flowctl; 1 process stopped by SIGTERM; 2 processes
    stopped by SIGUSR1 to torchrun's agent; 2 processes to the end. Each stop leaves last.pt
    and `preempted` with the signal's exit code; the global batches are those of one
    uninterrupted process, in order, each once. (That a 2-process resume ends bit-identical
    is checked below, after a rank dies, and across two nodes in test_multinode.py.)"""
    logs = [tmp_path / f"segment-{index}" for index in range(4)]
    for folder in logs:
        folder.mkdir()
    run = isolated_run_root / "two"
    first = spawn("train", "--run-name", "two", *run_args(references["data"]),
                  "--requeue-signal", "SIGUSR1", "--save-every", "4", "--nproc", "2",
                  env=with_hooks(FLOWCTL_SAMPLE_LOG=logs[0], FLOWCTL_THREADS_LOG=logs[0]))
    stop_when(first, run, signal.SIGTERM, after_step=0)
    assert finish(first) == 143, first.stderr_text
    assert "Traceback" not in first.stderr_text
    # A stop leaves through an exception, whose frames hold the trainer: freed all the same.
    assert gloo_threads_left(logs[0]) == {"threads-rank0.txt": [], "threads-rank1.txt": []}
    stopped_at = load(run / "last.pt")["global_step"]
    assert run_json(run)["status"] == "preempted" and 0 < stopped_at < EPOCHS * 9

    refused = cli("resume", "two", "--strict-world-size")  # refused before it starts: in-process
    assert refused.exit_code == 2 and "--strict-world-size" in refused.stderr
    second = spawn("resume", "two", env=sample_log(logs[1]))
    stop_when(second, run, signal.SIGTERM, after_step=stopped_at + 4)
    assert finish(second) == 143, second.stderr_text
    assert "continuing on 1 process(es) a run trained on 2" in second.stderr_text
    stopped_at = load(run / "last.pt")["global_step"]

    third = spawn("resume", "two", "--requeue-signal", "SIGUSR1", "--nproc", "2",
                  env=sample_log(logs[2]))
    stop_when(third, run, signal.SIGUSR1, after_step=stopped_at + 4, to_agent=True)
    assert finish(third) == 138, third.stderr_text
    assert run_json(run)["status"] == "preempted"
    assert load(run / "last.pt")["global_step"] > stopped_at

    fourth = spawn("resume", "two", "--nproc", "2", env=sample_log(logs[3]))
    assert finish(fourth) == 0, fourth.stderr_text
    assert run_json(run)["status"] == "finished"
    assert sum((steps_of(folder) for folder in logs), []) == steps_of(references["logs"]["one"])
    final = load(run / "last.pt")
    assert final["global_step"] == EPOCHS * 9
    for name, tensor in load(references["root"] / "one" / "last.pt")["model_state_dict"].items():
        torch.testing.assert_close(final["model_state_dict"][name], tensor, rtol=0, atol=1e-5)
    assert [r["step"] for r in metrics_rows(run)] == [r["step"] for r in metrics_rows(references["root"] / "two")]


def test_a_rank_that_dies_is_restarted_and_the_run_ends_identical(references, isolated_run_root):
    process = spawn("train", "--run-name", "two", *run_args(references["data"]),
                    "--save-every", "4", "--nproc", "2", "--max-restarts", "1")
    wait_for((isolated_run_root / "two" / "last.pt").exists, process=process, what="a last.pt",
             timeout=180)
    wait_for(lambda: 1 in workers_of(process.pid), process=process, what="rank 1")
    os.kill(workers_of(process.pid)[1], signal.SIGKILL)
    assert finish(process) == 0, process.stderr_text
    assert run_json(isolated_run_root / "two")["status"] == "finished"
    assert_same_state(load(references["root"] / "two" / "last.pt"),
                      load(isolated_run_root / "two" / "last.pt"))


def test_a_rank_that_dies_without_restarts_fails_the_run_and_says_which(references,
                                                                      isolated_run_root):
    """Rank 0 is then stopped by torchrun's agent (SIGTERM: it saves) or fails in a collective
    (gloo: connection closed), whichever comes first; either way flowctl says which rank ended
    the run, not that it was stopped."""
    process = spawn("train", "--run-name", "two", *run_args(references["data"]),
                    "--save-every", "4", "--nproc", "2")
    wait_for((isolated_run_root / "two" / "last.pt").exists, process=process, what="a last.pt",
             timeout=180)
    wait_for(lambda: 1 in workers_of(process.pid), process=process, what="rank 1")
    os.kill(workers_of(process.pid)[1], signal.SIGKILL)
    assert finish(process) == 1, process.stderr_text
    assert "Traceback" not in process.stderr_text
    errors = [line for line in process.stderr_text.splitlines() if line.startswith("error: ")]
    assert errors[-1] == ("error: rank 1 failed (killed by SIGKILL), which ended the run; "
                          "FLOWCTL_DEBUG=1 shows every rank's output"), process.stderr_text
    assert len(errors) == 1 or errors[0].startswith("error: run two failed: "), errors
