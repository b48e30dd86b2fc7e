"""Weights & Biases as a tracker: offline by default, one run per flowctl run, resumed by id.

Every wandb call goes through the guard (study.runs.tracker): the first exception prints
one warning and turns the tracker off, while metrics.csv and run.json keep recording.
`wandb` is imported only when a run starts.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from study.runs.tracker import GuardedTracker

WANDB_MODES = ("offline", "online", "disabled")


def resolve_wandb_mode(flag: str | None, recorded: str | None = None) -> str:
    """$WANDB_MODE wins (the wandb convention), then --wandb-mode, then the mode the run
    recorded in run.json (a resume or an eval goes on as the run started), then `offline`."""
    recorded = recorded if recorded in WANDB_MODES else None  # run.json is data: no surprises
    mode = os.environ.get("WANDB_MODE") or flag or recorded or "offline"
    return "disabled" if mode in ("dryrun", "disabled") else mode


class WandbTracker(GuardedTracker):
    """One wandb run, resumable by id; `status` is ok, disabled or unavailable."""

    name = "wandb"

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.run = None
        self.status = "disabled" if mode == "disabled" else "ok"

    @property
    def active(self) -> bool:
        return self.run is not None

    def teardown(self) -> None:
        self.run = None
        with contextlib.suppress(Exception):  # stop wandb's service and its exit hooks too
            import wandb

            wandb.teardown()

    def start(self, *, project: str, group: str, name: str, config: dict[str, Any],
              run_dir: Path, run_id: str | None, resume_step: int | None = None) -> str | None:
        """wandb.init with `resume="allow"` on `run_id`; returns the run id (`run_id` if no run)."""
        if self.mode == "disabled":
            return run_id
        self.run = self.guard("init", self._init, project, group, name, config, Path(run_dir), run_id)
        if self.run is None:
            return run_id
        self.guard("define_metric", self.run.define_metric, "val/loss", summary="min")
        self.guard("define_metric", self.run.define_metric, "train/loss", summary="min")
        if run_id and self.run is not None:
            self.skip_through_step = self._last_step_already_logged(Path(run_dir), run_id)
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
        self.guard("log", self.run.log, metrics, step=step)

    def finish(self, *, status: str | None = None, exit_code: int = 0,
               summary: dict[str, Any] | None = None, tags: tuple[str, ...] = (),
               notes: str | None = None) -> None:
        if self.run is None:
            return
        run = self.run
        if status == "preempted" and hasattr(run, "mark_preempting"):
            self.guard("mark_preempting", run.mark_preempting)
        if summary:
            self.guard("summary", run.summary.update, summary)
        if tags:
            self.guard("tags", setattr, run, "tags", tuple(run.tags or ()) + tags)
        if notes:
            self.guard("notes", setattr, run, "notes", notes)
        self.guard("finish", run.finish, exit_code=exit_code)
        self.run = None
