"""The tracker interface: start, log(metrics, step), finish; and the guard every tracker uses.

A tracker mirrors the run's metric history somewhere else (wandb, MLflow, TensorBoard). Its
contract, shared by every implementation:

- `start(project=, group=, name=, config=, run_dir=, run_id=, resume_step=)` opens (or, given
  `run_id`, continues) the tracker's run and returns its id (None when it has none). After
  a resume, `skip_through_step` is the last step an earlier segment really stored there:
  the recorder replays metrics.csv's rows after it (what a killed process lost), and `log`
  drops the steps at or below it (recomputed bit-identically by the resumed run).
- `log(metrics, step)`: one row at `step=global_step`; steps only ever increase.
- `finish(status=, exit_code=, summary=, tags=, notes=)` closes it; `status` is run.json's
  final status (None: a plain close, taken as finished).

A tracker failure never stops training: every call into the library goes through
`guard`, which prints one warning, marks the tracker `unavailable` and turns later calls
into no-ops while metrics.csv and run.json keep recording. No tracker library is imported
here or at module level of any tracker module: only when a run starts with it.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("flowctl")

# run.json's status -> the tag every tracker gives a run that ended that way.
END_TAGS = {"failed": ("failed",), "preempted": ("preempted",)}


class GuardedTracker:
    """Base of every tracker: `status` is ok, disabled or unavailable; `guard` keeps a
    library's exception from ever reaching the training loop."""

    name = "tracker"

    def __init__(self) -> None:
        self.status = "ok"
        self.skip_through_step = -1

    @property
    def active(self) -> bool:
        """Whether a run is open and calls should go through."""
        raise NotImplementedError

    def guard(self, what: str, call, *args, **kwargs) -> Any:
        """`call(*args, **kwargs)`, or None after one warning if it raises (then inactive)."""
        if not self.active and what != "init":
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:  # libraries raise many types (service gone, bad settings, ...)
            first_line = str(err).splitlines()[0] if str(err) else ""
            log.warning("%s %s failed (%s: %s); continuing with local logging only",
                        self.name, what, type(err).__name__, first_line)
            self.status = "unavailable"
            self.teardown()
            return None

    def teardown(self) -> None:
        """Drop the run after a failure (no library call may raise from here)."""

    def start(self, *, project: str, group: str, name: str, config: dict[str, Any],
              run_dir, run_id: str | None, resume_step: int | None = None) -> str | None:
        raise NotImplementedError

    def log(self, metrics: dict[str, Any], step: int) -> None:
        raise NotImplementedError

    def finish(self, *, status: str | None = None, exit_code: int = 0,
               summary: dict[str, Any] | None = None, tags: tuple[str, ...] = (),
               notes: str | None = None) -> None:
        raise NotImplementedError


def numeric_items(metrics: dict[str, Any]) -> dict[str, float]:
    """The entries a scalar tracker can plot: ints and floats (bools and text left out)."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}
