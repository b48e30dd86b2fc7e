"""TensorBoard as a tracker: scalars in {run}/tb/ at step=global_step, appending across resumes.

On resume, `purge_step` hides the events a crashed segment wrote past the checkpoint, so the
curve continues with no duplicates. Needs the `tensorboard` package (checked before a run
starts); torch's SummaryWriter is imported only when a run starts with it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.runs.tracker import GuardedTracker, numeric_items

TB_FOLDER = "tb"


def check_tensorboard_available() -> None:
    """UsageError (one line, with the install command) when tensorboard is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError("TensorBoard logging needs the tensorboard package: pip install "
                         "tensorboard (or pip install -e '.[tensorboard]')")


class TensorBoardTracker(GuardedTracker):
    """A SummaryWriter on {run}/tb/; it has no run id and nothing to tag."""

    name = "tensorboard"

    def __init__(self) -> None:
        super().__init__()
        self.writer = None

    @property
    def active(self) -> bool:
        return self.writer is not None

    def teardown(self) -> None:
        self.writer = None

    def start(self, *, project: str, group: str, name: str, config: dict[str, Any],
              run_dir: Path, run_id: str | None, resume_step: int | None = None) -> None:
        # Everything up to the checkpoint stays (the purge is what keeps it exact), so there
        # is nothing to replay from metrics.csv.
        self.skip_through_step = -1 if resume_step is None else resume_step
        self.writer = self.guard("init", self._writer, Path(run_dir) / TB_FOLDER, resume_step)
        return None

    @staticmethod
    def _writer(log_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        return SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.writer is None or step <= self.skip_through_step:
            return
        for key, value in numeric_items(metrics).items():
            self.guard("log", self.writer.add_scalar, key, value, global_step=step)

    def finish(self, *, status: str | None = None, exit_code: int = 0,
               summary: dict[str, Any] | None = None, tags: tuple[str, ...] = (),
               notes: str | None = None) -> None:
        if self.writer is not None:
            self.guard("close", self.writer.close)
            self.writer = None
