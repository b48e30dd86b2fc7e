"""When the trainer writes which checkpoint file, and the guard on what it writes.

Policy: at each epoch end last.pt, and best.pt first when the selection metric improved
(a crash between the two renames leaves last.pt older, and the resume recomputes and
rewrites both); every `save_every` steps last.pt; when a stop is requested last.pt; with
`keep_snapshots` K also `epoch-NNNN.pt` at each epoch end, the oldest beyond K removed.
One write serialises the state once; the other names are hard links of the same file.

Guard: a state whose weights or pending loss are not finite is never written, so a run
diverging between log steps cannot overwrite the last good last.pt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from study.errors import RunFailed
from study.runs.paths import BEST_NAME, LAST_NAME, snapshot_name
from study.runs.recorder import RunRecorder


class Checkpointer:
    def __init__(self, recorder: RunRecorder, *, save_every: int, keep_snapshots: int):
        self.recorder = recorder
        self.save_every = save_every
        self.keep_snapshots = keep_snapshots

    def after_step(self, *, step: int, epoch: int, epoch_done: bool, improved: bool,
                   stopping: bool, state: Callable[[], dict[str, Any]],
                   finite: Callable[[], torch.Tensor]) -> None:
        """Write what the policy asks for after optimizer step `step` (1-based count)."""
        names = []
        if epoch_done:
            names = [BEST_NAME, LAST_NAME] if improved else [LAST_NAME]
            if self.keep_snapshots:
                names.append(snapshot_name(epoch))
        elif stopping or (self.save_every and step % self.save_every == 0):
            names = [LAST_NAME]
        if names:
            self.write(names, state=state, finite=finite, step=step)

    def write(self, names: list[str], *, state: Callable[[], dict[str, Any]],
              finite: Callable[[], torch.Tensor], step: int) -> None:
        if not finite():  # one host sync per checkpoint, on every rank alike
            raise RunFailed(f"non-finite loss at step {step}")
        if not self.recorder.enabled:  # only rank 0 writes
            return
        self.recorder.save_checkpoint(state(), [self.recorder.run_dir / name for name in names],
                                      keep_snapshots=self.keep_snapshots)
