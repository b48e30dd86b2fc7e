"""When the trainer writes which checkpoint file, and the guard on what it writes.

Policy, with a budget of `interval_s` seconds (`--checkpoint-interval`, 0: every epoch):
- at an epoch end, last.pt when `interval_s` has passed since the last write (always with
  0); when the selection metric improved, the state is kept in memory as the pending best;
- every `save_every` steps, when a stop is requested, and when training ends: last.pt;
- whenever last.pt is written, a pending best is written first as best.pt (so best.pt is
  never newer than last.pt: a crash between the two leaves last.pt older, and the resume
  recomputes both). When the best is the current state, best.pt is a copy of last.pt's new
  file (two files: one damaged in place leaves the other);
- with `keep_snapshots` K, `epoch-NNNN.pt` at each epoch end written, the oldest beyond K
  removed.
A SIGKILL therefore loses at most `interval_s` seconds of training (or `save_every` steps,
or one epoch, whichever comes first), and a resume from what is on disk is exact.

The state is copied (`snapshot`) on the training thread, which costs a memory copy (not at
the end of training: nothing changes it any more); serialising and writing happen on the
recorder's writer thread.

Guard: a state whose weights or pending loss are not finite is never written, so a run
diverging between log steps cannot overwrite the last good last.pt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from study.errors import RunFailed
from study.runs.checkpoint import snapshot
from study.runs.paths import BEST_NAME, LAST_NAME, snapshot_name
from study.runs.recorder import RunRecorder


def all_finite(*tensors: torch.Tensor) -> torch.Tensor:
    """Whether every element of `tensors` is finite, as a device bool (no host sync)."""
    return torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all()


class Checkpointer:
    """The policy above for one run: `state()` returns the trainer's live state (a plain
    dict), `finite()` whether its weights and pending loss are finite (a device bool)."""

    def __init__(self, recorder: RunRecorder, *, state: Callable[[], dict[str, Any]],
                 finite: Callable[[], torch.Tensor], save_every: int, keep_snapshots: int,
                 interval_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.recorder, self.state, self.finite, self.clock = recorder, state, finite, clock
        self.save_every = save_every
        self.keep_snapshots = keep_snapshots
        self.interval_s = interval_s
        self.last_write = clock()
        self.pending_best: dict[str, Any] | None = None  # a snapshot not yet on disk
        self.pending_best_step = -1  # the global_step it was taken at
        self.written_step = -1  # global_step of the newest last.pt written

    def due(self, *, step: int, epoch_done: bool, stopping: bool) -> bool:
        """Whether last.pt is written after optimizer step `step` (1-based count)."""
        return bool(stopping or (self.save_every and step % self.save_every == 0)
                    or (epoch_done and self.clock() - self.last_write >= self.interval_s))

    def after_step(self, *, step: int, epoch: int, epoch_done: bool, improved: bool,
                   stopping: bool, last: bool = False) -> None:
        """Write what the policy asks for after optimizer step `step` (1-based count);
        `last`: no step follows (`finish` comes next), so a best state needs no copy."""
        due = self.due(step=step, epoch_done=epoch_done, stopping=stopping)
        if epoch_done and improved and not due:  # at the last step finish() writes it as is
            self._check(step)
            self.pending_best = None if last else snapshot(self.state())
            self.pending_best_step = step
        if due:
            extra = [snapshot_name(epoch)] if epoch_done and self.keep_snapshots else []
            self.write(step=step, best_now=epoch_done and improved, extra=extra)

    def finish(self, *, step: int) -> None:
        """At the end of training: last.pt (and a pending best) unless already on disk. The
        live state is written without a copy: wait for `recorder.flush()` before changing it."""
        if step != self.written_step or self.pending_best is not None:
            self.write(step=step, best_now=False, final=True)

    def write(self, *, step: int, best_now: bool, extra: list[str] | None = None,
              final: bool = False) -> None:
        """last.pt (and best.pt, extra names) of the state now, a pending best first. `final`:
        training is over and the caller waits for the writer (`recorder.flush`) before
        anything changes the state again, so it is handed over as is, without a copy."""
        self._check(step)
        self.last_write, self.written_step = self.clock(), step
        if self.pending_best_step == step:
            best_now = True  # the pending best is this very state: serialised once, copied
        if not self.recorder.enabled:  # only rank 0 writes
            self.pending_best, self.pending_best_step = None, -1
            return
        folder = self.recorder.run_dir
        jobs = []
        if self.pending_best is not None and not best_now:
            jobs.append((self.pending_best, [folder / BEST_NAME]))
        names = [BEST_NAME, LAST_NAME] if best_now else [LAST_NAME]
        payload = self.state() if final else snapshot(self.state())
        jobs.append((payload, [folder / name for name in [*names, *(extra or [])]]))
        self.pending_best, self.pending_best_step = None, -1
        self.recorder.save_checkpoints(jobs, keep_snapshots=self.keep_snapshots)

    def _check(self, step: int) -> None:
        if not self.finite():  # one host sync per checkpoint, on every rank alike
            raise RunFailed(f"non-finite loss at step {step}")
