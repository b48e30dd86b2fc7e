"""Epoch-end validation on a spare CPU core while the next epoch trains: the same numbers,
off the training thread.

At an epoch end the EMA weights are copied into a second model (`copy.deepcopy` of the
trained one, made once) and its validation pass runs on a worker thread; the trainer goes on
with the next epoch and collects the loss before anything depends on it: the next log row,
the next checkpoint write, the next epoch end, the end of the run. The trainer overlaps only
where the result cannot change what happens (see `FlowTrainer._may_overlap`), and the loss is
the same number, bit for bit, as the pass on the training thread (the same ops on the same
weights, one intra-op thread each), so metrics, best.pt and resume do not depend on it.
The copy carries the model's forward hooks: they run on the worker thread, in eval mode.

Enabled for one CPU process whose torch runs fewer intra-op threads than the cores it may
use (`--threads`, or a sweep's share of the cores), with a model of at least
`SMALL_MODEL_PARAMETERS`: below that a step is a chain of tiny ops that hold the GIL, and a
second Python thread slowed the 2-D toy's steps by 15% (scripts/bench_trainer.py) while its
validation is only ~3% of the run. $FLOWCTL_OVERLAP_VALIDATION=0 turns it off, =1 forces it
on (tests compare both).
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from study.flow_matching.device import SMALL_MODEL_PARAMETERS
from study.flow_matching.optim import EMAModel
from study.flow_matching.validation import Validator
from study.sweep.resources import usable_cpus  # the cores this process may use


def overlap_pays(device: torch.device, world_size: int, parameters: int) -> bool:
    """Whether epoch-end validation should run beside the training thread."""
    forced = os.environ.get("FLOWCTL_OVERLAP_VALIDATION")
    if forced in ("0", "1"):
        return forced == "1"
    return (device.type == "cpu" and world_size == 1 and parameters >= SMALL_MODEL_PARAMETERS
            and torch.get_num_threads() < usable_cpus())


@dataclass
class PendingEpochEnd:
    """An epoch end whose validation is running: what the trainer finishes once it is in."""

    future: Future  # -> the validation loss (float)
    epoch: int
    stage: Any
    step: int  # the global_step of the epoch's last optimizer step
    seconds: float  # the epoch's wall time
    row: dict[str, Any] = field(default_factory=dict)  # the train log row of that step, if any
    state: dict[str, Any] | None = None  # a snapshot of the trainer's state at `step`
    finite: torch.Tensor | None = None  # whether that state was finite (a device bool)


class ValidationOverlap:
    def __init__(self, validator: Validator, *, enabled: bool):
        self.validator, self.enabled = validator, enabled
        self.pool: ThreadPoolExecutor | None = None
        self.shadow_model: nn.Module | None = None  # holds the EMA weights being validated
        self.pending: PendingEpochEnd | None = None

    def start(self, model: nn.Module, ema: EMAModel, **pending: Any) -> None:
        """Copy `ema`'s weights into the shadow model and validate it on the worker;
        `pending`: PendingEpochEnd's fields but the future."""
        assert self.pending is None, "expected the previous validation collected first"
        if self.shadow_model is None:
            self.shadow_model = copy.deepcopy(model)
            self.pool = ThreadPoolExecutor(1, "validation")
        ema.copy_to(self.shadow_model)
        future = self.pool.submit(self.validator.loss_of, self.shadow_model, pending["stage"])
        self.pending = PendingEpochEnd(future=future, **pending)

    def collect(self) -> tuple[PendingEpochEnd, float]:
        """The pending epoch end and its validation loss (waits for it)."""
        pending, self.pending = self.pending, None
        return pending, pending.future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
