"""Weights & Biases, kept at arm's length: a tracker failure never kills training.

Every wandb call goes through `_guard`: the first exception prints one warning, marks the
tracker `unavailable` and turns later calls into no-ops, while metrics.csv and run.json
keep recording locally. `wandb` is imported only when a run starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("flowctl")

WANDB_MODES = ("offline", "online", "disabled")


def resolve_wandb_mode(flag: str | None) -> str:
    """$WANDB_MODE wins (the wandb convention), then --wandb-mode, then `offline`."""
    mode = os.environ.get("WANDB_MODE") or flag or "offline"
    return "disabled" if mode in ("dryrun", "disabled") else mode


class WandbTracker:
    """One wandb run, resumable by id; `status` is ok, disabled or unavailable."""

    def __init__(self, mode: str):
        self.mode = mode
        self.run = None
        self.status = "disabled" if mode == "disabled" else "ok"
        # Steps at or below this were logged by an earlier segment of the same run; the
        # resumed run recomputes them bit-identically, so skipping them loses nothing.
        self.skip_through_step = -1

    def _guard(self, what: str, call, *args, **kwargs) -> Any:
        if self.run is None and what != "init":
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:  # wandb raises many types (service gone, bad settings, ...)
            log.warning("wandb %s failed (%s: %s); continuing with local logging only",
                        what, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            self.status = "unavailable"
            self.run = None
            with contextlib.suppress(Exception):  # stop wandb's service and its exit hooks too
                import wandb

                wandb.teardown()
            return None

    def start(self, *, project: str, group: str, name: str, config: dict[str, Any],
              run_dir: Path, run_id: str | None) -> str | None:
        """wandb.init with `resume="allow"` on `run_id`; returns the run id (None if no run)."""
        if self.mode == "disabled":
            return run_id
        self.run = self._guard("init", self._init, project, group, name, config, run_dir, run_id)
        if self.run is None:
            return run_id
        self._guard("define_metric", self.run.define_metric, "val/loss", summary="min")
        self._guard("define_metric", self.run.define_metric, "train/loss", summary="min")
        if run_id and self.run is not None:
            self.skip_through_step = self._last_step_already_logged(run_dir, run_id)
        return self.run.id if self.run is not None else run_id

    def _last_step_already_logged(self, run_dir: Path, run_id: str) -> int:
        """What an earlier segment of this run really logged (a killed process loses what
        wandb had not flushed, so metrics.csv is no guide): online, the server's count;
        offline, the history in the earlier segments' files."""
        if self.mode == "online":
            return int(getattr(self.run, "starting_step", 0) or 0) - 1
        from study.runs.wandb_records import last_logged_step

        wandb_root = Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else run_dir
        return last_logged_step(wandb_root, run_id)

    def _init(self, project, group, name, config, run_dir: Path, run_id):
        import wandb

        wandb_dir = None if os.environ.get("WANDB_DIR") else run_dir
        return wandb.init(
            project=project, group=group, name=name, config=config, dir=wandb_dir,
            mode=self.mode, id=run_id, resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", save_code=False, disable_git=True,
                                    x_disable_stats=True, silent=True),
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is None or step <= self.skip_through_step:
            return
        self._guard("log", self.run.log, metrics, step=step)

    def finish(self, *, exit_code: int = 0, summary: dict[str, Any] | None = None,
               tags: tuple[str, ...] = (), notes: str | None = None,
               preempting: bool = False) -> None:
        if self.run is None:
            return
        run = self.run
        if preempting and hasattr(run, "mark_preempting"):
            self._guard("mark_preempting", run.mark_preempting)
        if summary:
            self._guard("summary", run.summary.update, summary)
        if tags:
            self._guard("tags", setattr, run, "tags", tuple(run.tags or ()) + tags)
        if notes:
            self._guard("notes", setattr, run, "notes", notes)
        self._guard("finish", run.finish, exit_code=exit_code)
        self.run = None


class TensorBoardWriter:
    """Optional scalars in {run}/tb/, with explicit global_step, appending across resumes.

    On resume, `purge_step` hides events a crashed segment wrote past the checkpoint, so
    the curve continues with no duplicates. Needs the `tensorboard` package.
    """

    @staticmethod
    def check_available() -> None:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            from study.errors import UsageError

            raise UsageError("--tensorboard needs the tensorboard package: "
                             "pip install tensorboard (or pip install -e '.[tensorboard]')")

    def __init__(self, log_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.close()
