"""SIGTERM, SIGINT and --requeue-signal: finish the step, save last.pt, mark the run
`preempted`, exit 128 + signal; a second SIGINT while stopping exits at once."""

from __future__ import annotations

import signal
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


@pytest.mark.parametrize("signum, extra, exit_code", [
    (signal.SIGTERM, [], 143),
    (signal.SIGINT, [], 130),
    (signal.SIGUSR1, ["--requeue-signal", "SIGUSR1"], 138),
])
def test_graceful_stop_saves_marks_preempted_and_resumes_exactly(
        tmp_path, isolated_run_root, flowctl, signum, extra, exit_code):
    args = run_flags(vectors_file(tmp_path))
    assert cli("train", "--run-name", "reference", *args).exit_code == 0
    run = isolated_run_root / "stopped"
    child = flowctl("train", "--run-name", "stopped", *args, *extra)
    wait_for((run / "last.pt").exists, process=child, what="the first last.pt")
    child.send_signal(signum)
    assert child.wait(60) == exit_code, child.stderr

    status, last = run_json(run), load(run / "last.pt")
    assert status["status"] == "preempted" and status["error"] is None
    assert status["global_step"] == last["global_step"] < 270, "stopped where last.pt says"
    assert checkpoint_problems(run) == [] and not (run / "run.lock").exists()
    name = signal.Signals(signum).name
    assert f"stopped by {name}; last.pt is saved, continue with `flowctl resume`" in child.stderr
    assert "Traceback" not in child.stderr

    resumed = cli("resume", "stopped")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_state(load(isolated_run_root / "reference" / "last.pt"), load(run / "last.pt"))
    assert metrics_rows(run) == metrics_rows(isolated_run_root / "reference")


def test_requeue_signal_is_not_caught_without_the_flag(tmp_path, isolated_run_root, flowctl):
    run = isolated_run_root / "usr1"
    child = flowctl("train", "--run-name", "usr1", *run_flags(vectors_file(tmp_path)))
    wait_for((run / "last.pt").exists, process=child, what="the first last.pt")
    child.send_signal(signal.SIGUSR1)
    assert child.wait(60) == -signal.SIGUSR1  # the default action: terminate, nothing saved
    assert run_json(run)["status"] == "running" and checkpoint_problems(run) == []


def test_second_sigint_while_stopping_exits_at_once(tmp_path, isolated_run_root, flowctl):
    """The second SIGINT 4 ms after the first lands while the stop is finishing its step and
    writing last.pt (if both arrive before the Python handler runs they merge into one
    graceful stop: 130). Either way the process ends at once and whatever last.pt exists
    loads; the next start reclaims the lock and removes a half-written temp file."""
    run = isolated_run_root / "twice"
    child = flowctl("train", "--run-name", "twice", *run_flags(vectors_file(tmp_path)))
    wait_for((run / "last.pt").exists, process=child, what="the first last.pt")
    child.send_signal(signal.SIGINT)
    time.sleep(0.004)
    child.send_signal(signal.SIGINT)
    sent = time.monotonic()
    code = child.wait(30)
    assert code in (-signal.SIGINT, 130), child.stderr
    assert time.monotonic() - sent < 5
    assert checkpoint_problems(run) == []
    if code == -signal.SIGINT:  # died at once, before or after the `preempted` mark
        assert run_json(run)["status"] in ("running", "preempted")
    result = cli("resume", "twice", "--epochs", "3")
    assert result.exit_code == 0, result.stderr
    assert not list(run.glob(".*.tmp-*")) and checkpoint_problems(run) == []


GRACEFUL_STOP_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from study.signals import GracefulStop
    stop = GracefulStop()
    stop.install()
    os.kill(os.getpid(), signal.SIGINT)   # the handler runs before the next statement
    print("requested" if stop.requested else "ignored", flush=True)
    os.kill(os.getpid(), signal.SIGINT)   # the second one: default action, now
    time.sleep(5)
    print("still alive", flush=True)
""")


def test_graceful_stop_second_signal_restores_the_default_action():
    """The mechanism, deterministically: real signals to a real process (no torch)."""
    process = subprocess.run([sys.executable, "-c", GRACEFUL_STOP_SCRIPT], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=30)
    assert process.stdout == "requested\n"
    assert process.returncode == -signal.SIGINT, process.stderr
