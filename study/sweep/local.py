"""The local launcher: points as child processes, at most K at once, until none is left.

Each child is `flowctl train --config {run}/sweep.yaml --resume auto` in its own session
(a terminal's Ctrl-C reaches the launcher only), its output appended to `{run}/train.log`.
What a child's exit means is read back from disk, never assumed:
    exit 0, or run.json finished/early_stopped   -> done
    exit 2 "is in use by pid N"                  -> another process trains it: wait for it,
                                                    take it over if that process dies
    stopped by a signal, run.json preempted      -> preempted (the next sweep resumes it)
    stopped by our forwarded signal while starting -> as it was (the next sweep runs it)
    anything else                                -> failed, with its one-line error
On SIGINT/SIGTERM the launcher forwards the signal once to each child (each writes last.pt
and becomes `preempted`), waits for them, and exits 128 + signal; a second signal exits at
once and leaves the children to finish their graceful stop.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from typing import IO

from study.install import child_env
from study.runs.lock import utc_now
from study.signals import ended_by, killed_by
from study.sweep.commands import TrainFlags, child_argv
from study.sweep.display import SweepDisplay
from study.sweep.grid import Grid, Point
from study.sweep.point_files import (
    POINT_LOG,
    clear_failure,
    last_error_line,
    mark_failed_before_start,
    read_record,
    record_failure,
    update_record,
    write_point_config,
)
from study.sweep.resources import Slots
from study.sweep.state import PointState, lock_is_live, read_point_state, summary_line

POLL_S = 0.05  # how often children are checked (exit detection latency)
REFRESH_S = 0.5  # live table and points running elsewhere
MAX_LAUNCHES = 5  # per point and sweep: a point that keeps bouncing is reported, not retried forever
LOCK_IN_USE = "is in use by"
CLAIM_RACE = "already has checkpoints"  # lost a start race to a trainer that then finished


@dataclass
class Child:
    point: Point
    process: subprocess.Popen
    slot: int
    log_offset: int
    started: float
    signalled: bool = False


class LocalLauncher:
    def __init__(self, grid: Grid, states: list[PointState], slots: Slots, flags: TrainFlags,
                 *, retry_failed: bool = False, display: SweepDisplay | None = None):
        self.grid, self.slots, self.flags = grid, slots, flags
        self.retry_failed = retry_failed
        self.display = display or SweepDisplay(plain=True)
        self.states = {state.point.name: state for state in states}
        self.queue = deque(s.point for s in states if self._wanted(s))
        self.children: dict[int, Child] = {}  # slot -> child
        self.elsewhere = {s.point.name: s.point for s in states if s.state == "running"}
        self.launches: dict[str, int] = {}
        self.last_lock_error: dict[str, str] = {}
        self.stop_signal: int | None = None
        self.abandon = False

    def _wanted(self, state: PointState) -> bool:
        return state.state in ("pending", "preempted", "crashed") or (
            state.state == "failed" and self.retry_failed)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int | None:
        """Run until every point is done or failed; returns the signal that stopped the
        sweep (None when it ran to the end)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.display.start()
        last_refresh = 0.0
        try:
            for name in self.elsewhere:
                detail = self.states[name].detail
                self.display.event(f"waiting for {name}: running elsewhere"
                                   + (f" ({detail})" if detail else ""))
            while not self.abandon:
                self._reap()
                if self.stop_signal is None:
                    self._fill_slots()
                else:
                    self._forward_stop()
                if not self.children and (self.stop_signal is not None
                                          or not (self.queue or self.elsewhere)):
                    break
                now = time.monotonic()
                if now - last_refresh >= REFRESH_S:
                    last_refresh = now
                    self._check_elsewhere()
                    self._refresh()
                time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._refresh()
            self.display.close()
        return self.stop_signal

    def _on_signal(self, signum, frame) -> None:
        # Only flags here; the loop forwards the signal (a child started just now included).
        if self.stop_signal is not None:
            self.abandon = True  # second signal: stop waiting; children finish stopping alone
        self.stop_signal = self.stop_signal or signum

    def _forward_stop(self) -> None:
        unsignalled = [c for c in self.children.values() if not c.signalled]
        for child in unsignalled:
            child.signalled = True
            if child.process.poll() is None:
                child.process.send_signal(self.stop_signal)
        if unsignalled:
            self.display.event(f"stopping: {len(unsignalled)} running point(s) save last.pt "
                               "and become preempted; run the same command to continue them")

    # -- starting ------------------------------------------------------------------------
    def _fill_slots(self) -> None:
        free = [slot for slot in range(self.slots.parallel) if slot not in self.children]
        while free and self.queue:
            point = self.queue.popleft()
            state = read_point_state(point, self.flags.ckpt_dir)  # it may have moved on
            self.states[point.name] = state
            if state.done or (state.state == "failed" and not self.retry_failed):
                self.display.event(f"{state.state} {point.name} (elsewhere, meanwhile)")
                continue
            if state.state == "conflict":  # another config was trained there meanwhile
                self.display.event(f"conflict {point.name}: {state.detail}")
                continue
            if _trained_elsewhere(state):
                self._wait_elsewhere(point, state.detail)
                continue
            self._start(point, state, free.pop(0))

    def _start(self, point: Point, state: PointState, slot: int) -> None:
        folder = state.folder
        config_path = write_point_config(folder, point)
        self.launches[point.name] = self.launches.get(point.name, 0) + 1
        attempts = int(read_record(folder).get("attempts") or 0) + 1
        update_record(folder, grid=str(self.grid.path.absolute()), group=self.grid.group,
                      config_hash=point.config_hash, attempts=attempts, launcher="local",
                      last_started_at=utc_now())
        if state.state == "failed":
            clear_failure(folder)
        with open(folder / POINT_LOG, "ab") as log:
            log.write(f"==== flowctl sweep: attempt {attempts} at {utc_now()} on "
                      f"{socket.gethostname()} (sweep pid {os.getpid()}) ====\n".encode())
            log.flush()
            offset = log.tell()
            process = _spawn(child_argv(config_path, self.flags), log,
                             {**child_env(), **self.slots.env_for(slot)})
        self.children[slot] = Child(point, process, slot, offset, time.monotonic())
        action = {"pending": "started", "failed": "retrying"}.get(state.state, "resuming")
        self.display.event(f"{action} {point.name} (pid {process.pid}, log {folder / POINT_LOG})")
        self.states[point.name] = PointState(point=point, state="running", folder=folder,
                                             run=state.run)

    # -- what an exit means --------------------------------------------------------------
    def _reap(self) -> None:
        for slot, child in list(self.children.items()):
            code = child.process.poll()
            if code is not None:
                del self.children[slot]
                self._classify(child, code)

    def _classify(self, child: Child, code: int) -> None:
        point = child.point
        state = read_point_state(point, self.flags.ckpt_dir)
        self.states[point.name] = state
        folder = state.folder
        error = last_error_line(folder / POINT_LOG, child.log_offset)
        took = time.monotonic() - child.started
        if state.done or code == 0:
            clear_failure(folder)
            best = state.run.best_val_loss if state.run else None
            best_text = f", best val {best:.4g}" if best is not None else ""
            self.display.event(f"{state.state if state.done else 'done'} {point.name} "
                               f"in {took:.1f}s{best_text}")
        elif code == 2 and error and LOCK_IN_USE in error:
            self.last_lock_error[point.name] = error
            self._wait_elsewhere(point, error.split(LOCK_IN_USE, 1)[1].split(";")[0].strip())
        elif code == 2 and error and CLAIM_RACE in error and self._may_launch(point):
            self.queue.appendleft(point)
        elif code > 128 and state.state == "preempted":
            clear_failure(folder)
            self.display.event(f"preempted {point.name} (exit {code}): last.pt saved")
        elif child.signalled and ended_by(code, self.stop_signal):
            # Our own stop reached it while it was starting, before it had trained anything
            # to save: nothing is lost, and the next sweep starts (or resumes) it as before.
            clear_failure(folder)
            self.display.event(f"stopped {point.name} while it was starting (exit {code}); "
                               "the next sweep runs it")
        else:
            if error is None:
                error = (killed_by(code) if code < 0
                         else state.error or f"exit code {code}; see {folder / POINT_LOG}")
            mark_failed_before_start(folder, point, error)
            record_failure(folder, exit_code=code, error=error)
            self.states[point.name] = read_point_state(point, self.flags.ckpt_dir)
            self.display.event(f"failed {point.name} (exit {code}): {error}")

    def _may_launch(self, point: Point) -> bool:
        return self.launches.get(point.name, 0) < MAX_LAUNCHES

    # -- points another process trains ---------------------------------------------------
    def _wait_elsewhere(self, point: Point, who: str | None) -> None:
        if point.name not in self.elsewhere:
            self.display.event(f"waiting for {point.name}: running elsewhere"
                               + (f" ({who})" if who else ""))
        self.elsewhere[point.name] = point

    def _check_elsewhere(self) -> None:
        for name, point in list(self.elsewhere.items()):
            state = read_point_state(point, self.flags.ckpt_dir)
            self.states[name] = state
            if _trained_elsewhere(state):
                continue
            del self.elsewhere[name]
            if state.done:
                self.display.event(f"{state.state} {name} (trained elsewhere)")
            elif state.state == "failed" and not self.retry_failed:
                self.display.event(f"failed {name} (elsewhere): {state.error}")
            elif self._may_launch(point):
                self.queue.append(point)  # its trainer died: take it over
            else:
                why = self.last_lock_error.get(name, "its trainer keeps stopping")
                record_failure(state.folder, exit_code=None,
                               error=f"{why} (gave up after {MAX_LAUNCHES} launches)")
                self.display.event(f"failed {name}: {why} (gave up after {MAX_LAUNCHES} launches)")

    def _refresh(self) -> None:
        """Re-read the active points (ours and others') and redraw the live table."""
        ours = {child.point.name for child in self.children.values()}
        for name in ours | set(self.elsewhere):
            state = read_point_state(self.states[name].point, self.flags.ckpt_dir)
            if name in ours:
                state.state = "running"  # ours until it exits, even before run.json says so
            self.states[name] = state
        states = list(self.states.values())
        self.display.refresh(states, summary_line(states))


def _trained_elsewhere(state: PointState) -> bool:
    """A live trainer holds the point's lock (see lock_is_live), unless its run.json went
    stale (`crashed`: silent for 15 minutes on another host, whose pids we cannot check)."""
    return lock_is_live(state.folder) and state.state != "crashed"


def _spawn(argv: list[str], log: IO[bytes], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
