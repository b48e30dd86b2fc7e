"""One run, one process: a second `flowctl` on the same run is refused while the first goes on
untouched; a lock left by a dead process is reclaimed with one warning; list-runs and
inspect-ckpt read a locked run freely."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.helpers import (
    REPO_ROOT,
    assert_same_state,
    cli,
    load,
    metrics_rows,
    run_flags,
    run_json,
    vectors_file,
    wait_for,
)
from tests.support.kill_loop import checkpoint_problems


def finished_pid() -> int:
    """The pid of a process that has exited (and been reaped): nobody is using it."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.slow
def test_second_process_on_a_running_run_is_refused_and_the_first_finishes(
        tmp_path, isolated_run_root, flowctl):
    args = run_flags(vectors_file(tmp_path), "--save-every", "1")
    assert cli("train", "--run-name", "reference", *args).exit_code == 0
    run = isolated_run_root / "busy"
    first = flowctl("train", "--run-name", "busy", *args)
    wait_for((run / "last.pt").exists, process=first, what="the first last.pt")
    # Held still (SIGSTOP) while the others try: it keeps its lock however fast it would train.
    os.kill(first.pid, signal.SIGSTOP)
    host = socket.gethostname()

    # The lock is checked before anything that could suggest a wrong next step (such as
    # "already has checkpoints; continue it with flowctl resume").
    for second in (["train", "--run-name", "busy", *args],
                   ["train", "--run-name", "busy", *args, "--overwrite"],
                   ["train", "--run-name", "busy", *args, "--resume", "auto"],
                   ["resume", "busy"], ["train", "--resume", str(run / "last.pt")]):
        refused = flowctl(*second)
        assert refused.wait(60) == 2, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        assert errors == [f"error: run busy is in use by pid {first.pid} on host {host}; "
                          "wait for it or stop it first"], refused.stderr
        assert "Traceback" not in refused.stderr
        assert (run / "last.pt").exists(), "--overwrite cleared a running run"

    # A fresh interpreter's plain `train` is refused before torch is imported (at once).
    code = ("import sys\nfrom study.cli.app import app\ntry:\n    app(args=sys.argv[1:])\n"
            "except SystemExit as exit:\n    print(exit.code, 'torch' in sys.modules)")
    fresh = subprocess.run([sys.executable, "-c", code, "train", "--run-name", "busy", *map(str, args)],
                           capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert fresh.stdout.split() == ["2", "False"], fresh.stdout + fresh.stderr
    assert f"is in use by pid {first.pid}" in fresh.stderr

    # Readers need no lock: list-runs and inspect-ckpt while the run holds it.
    assert first.poll() is None, "the first process should still be training"
    listed = {r["run_name"]: r for r in json.loads(cli("list-runs", "--json").stdout)}
    assert listed["busy"]["status"] == "running"
    inspected = cli("inspect-ckpt", "busy", "--last", "--json", "--no-tensors")
    assert inspected.exit_code == 0, inspected.stderr
    assert json.loads(inspected.stdout)["global_step"] > 0
    assert json.loads((run / "run.lock").read_text())["pid"] == first.pid

    os.kill(first.pid, signal.SIGCONT)
    assert first.wait(120) == 0, first.stderr
    assert run_json(run)["status"] == "finished" and not (run / "run.lock").exists()
    assert_same_state(load(isolated_run_root / "reference" / "last.pt"), load(run / "last.pt"))
    assert metrics_rows(run) == metrics_rows(isolated_run_root / "reference")


def write_lock(run, pid: int, host: str | None = None, **extra) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                              "since": "2024-01-01T00:00:00+00:00", **extra}))


def reclaim_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "reclaiming the lock" in line]


def test_lock_of_a_dead_process_is_reclaimed_with_one_warning(tmp_path, isolated_run_root):
    data = vectors_file(tmp_path)
    run = isolated_run_root / "orphan"
    pid = finished_pid()
    write_lock(run, pid)  # a fresh run whose folder holds only a stale lock
    result = cli("train", "--run-name", "orphan", *run_flags(data, epochs=1))
    assert result.exit_code == 0, result.stderr
    (warning,) = reclaim_warnings(result.stderr)
    assert warning.startswith("warning: reclaiming the lock of run orphan left by a dead process")
    assert f"'pid': {pid}" in warning
    assert not (run / "run.lock").exists()

    (run / "run.lock").write_text("\x00\x00 not json")  # torn or garbage: nobody holds it
    result = cli("resume", "orphan", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    assert "unreadable lock file" in reclaim_warnings(result.stderr)[0]


def test_lock_of_a_live_process_written_without_flock_is_respected(tmp_path, isolated_run_root):
    """A hand-written (or older flowctl's) lock naming a live pid, or a lock from another host,
    cannot be judged by flock: it is refused, as before."""
    data = vectors_file(tmp_path)
    assert cli("train", "--run-name", "held", *run_flags(data, epochs=1)).exit_code == 0
    run = isolated_run_root / "held"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid, host in ((live.pid, None), (live.pid, "gpu-node-7")):
            write_lock(run, pid, host)
            result = cli("resume", "held", "--epochs", "2")
            assert result.exit_code == 2
            assert f"is in use by pid {live.pid} on host {host or socket.gethostname()}" in result.stderr
    finally:
        live.kill()
        live.wait()


def test_lock_of_a_sigkilled_run_is_reclaimed_even_if_its_pid_is_reused(
        tmp_path, isolated_run_root, flowctl):
    """A container restarted after an OOM kill often gives flowctl the same small pid again;
    here the killed run's lock is made to name a live process (this one) on this host."""
    args = run_flags(vectors_file(tmp_path))
    run = isolated_run_root / "oom"
    child = flowctl("train", "--run-name", "oom", *args)
    wait_for((run / "last.pt").exists, process=child, what="the first last.pt")
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    lock = json.loads((run / "run.lock").read_text())
    assert lock["pid"] == child.pid
    (run / "run.lock").write_text(json.dumps({**lock, "pid": os.getpid()}))
    result = cli("resume", "oom", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    assert len(reclaim_warnings(result.stderr)) == 1
    assert checkpoint_problems(run) == [] and not (run / "run.lock").exists()


CONTEND = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from study.errors import UsageError
    from study.runs import lock as run_files
    from study.runs.lock import RunLock
    run, start, out = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    real_alive = run_files._alive
    def slow_alive(owner):  # widen the gap between judging a lock stale and replacing it
        alive = real_alive(owner)
        time.sleep(0.05)
        return alive
    run_files._alive = slow_alive
    while time.time() < start:
        pass
    lock = RunLock(run, "race")
    try:
        lock.acquire(warn=lambda message: None)
    except UsageError:
        sys.exit(0)
    held_from = time.time()
    time.sleep(0.2)
    held_to = time.time()
    lock.release()
    with open(out, "a") as handle:
        handle.write(json.dumps([os.getpid(), held_from, held_to]) + "\\n")
""")


@pytest.mark.slow
def test_processes_racing_for_a_stale_lock_never_both_win(tmp_path):
    """8 processes start at the same instant on a stale lock, each pausing 50 ms after judging
    it stale. Before the flock, several of them reclaimed it (each unlinking the lock another
    had just written) and trained side by side; now exactly one holds it at a time."""
    for round_index in range(2):
        run = tmp_path / f"round-{round_index}"
        write_lock(run, finished_pid())
        holders = tmp_path / f"holders-{round_index}.jsonl"
        start = time.time() + 1.0
        processes = [subprocess.Popen([sys.executable, "-c", CONTEND, str(run), str(start),
                                       str(holders)], cwd=REPO_ROOT) for _ in range(8)]
        assert [p.wait(60) for p in processes] == [0] * 8
        held = sorted(json.loads(line) for line in holders.read_text().splitlines())
        held.sort(key=lambda h: h[1])
        assert len(held) >= 1
        for earlier, later in zip(held, held[1:], strict=False):
            assert later[1] >= earlier[2], f"round {round_index}: two holders at once: {held}"
