"""Epoch-end validation on a spare CPU core while the next epoch trains: the same numbers,
off the training thread.

At an epoch end the worker copies the EMA weights into a second model (`copy.deepcopy` of
the trained one, made once) and the trainer's state into a snapshot (the pending best.pt, if
this epoch turns out best) while the next step's forward and backward run, then validates
the copy; the trainer goes on
with the next epoch and collects the loss before anything depends on it: the next log row,
the next checkpoint write, the next epoch end, the end of the run. The trainer overlaps only
where the result cannot change what happens (see `FlowTrainer._may_overlap`), and the loss is
the same number, bit for bit, as the pass on the training thread (the same ops on the same
weights, one intra-op thread each), so metrics, best.pt and resume do not depend on it.
The copy carries the model's forward hooks: they run on the worker thread, in eval mode.

Enabled where a second thread pays (`device.spare_core_pays`: one CPU process with a core
to spare and a model of 1M+ parameters; on the 2-D toy, whose validation is only ~3% of the
run, the second thread cost more than it saved). $FLOWCTL_OVERLAP_VALIDATION=0 turns it
off, =1 forces it on (tests compare both).
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from study.flow_matching.flows import build_flow
from study.flow_matching.optim import EMAModel
from study.flow_matching.validation import Validator
from study.runs.checkpoint import snapshot


@dataclass
class PendingEpochEnd:
    """An epoch end whose validation is running: what the trainer finishes once it is in."""

    future: Future  # -> (the state's snapshot, the validation loss)
    epoch: int
    stage: Any
    step: int  # the global_step of the epoch's last optimizer step
    seconds: float  # the epoch's wall time
    row: dict[str, Any] = field(default_factory=dict)  # the train log row of that step, if any
    state: dict[str, Any] | None = None  # a snapshot of the trainer's state at `step` (once collected)
    finite: torch.Tensor | None = None  # whether that state was finite (a device bool)


class ValidationOverlap:
    def __init__(self, validator: Validator, *, enabled: bool):
        self.validator, self.enabled = validator, enabled
        self.pool: ThreadPoolExecutor | None = None
        self.shadow_model: nn.Module | None = None  # holds the EMA weights being validated
        self.pending: PendingEpochEnd | None = None
        # False for a model with buffers (a forward may change them; decided at the first use):
        # its copies are made before training goes on, and its passes are never split.
        self.copy_on_worker = True
        self.copying: threading.Event | None = None  # set once the worker's copies are done
        self.overlapped = self.shared = 0  # epoch ends validated beside training; passes split

    def loss_now(self, model: nn.Module, ema: EMAModel, stage) -> float:
        """`ema`'s validation loss, on this thread and the worker together when enabled: the
        worker passes the first half of the batches on the shadow model while this thread
        passes the rest with the EMA weights swapped in; the batches' terms are added in
        order, so the number is the in-line one, bit for bit. OT flows (a pairing generator
        that runs through every batch), single-batch sets and models with buffers (the
        shadow's would be stale) run in line."""
        halves = len(self.validator.batches) // 2
        flow = build_flow(stage.flow, sigma=stage.sigma)
        if not self.enabled or flow.solves_a_plan or halves == 0:
            return self.validator.loss(model, ema, stage)
        self._prepare(model)
        if not self.copy_on_worker:  # a model with buffers
            return self.validator.loss(model, ema, stage)
        self.shared += 1
        ema.copy_to(self.shadow_model)
        first = self.pool.submit(self.validator.batch_terms, self.shadow_model, stage, range(halves))
        with ema.average_parameters(model):
            rest = self.validator.batch_terms(model, stage, range(halves, len(self.validator.batches)))
        return self.validator.total(first.result() + rest)

    def _prepare(self, model: nn.Module) -> None:
        """The shadow model and the worker thread, made at the first use."""
        if self.shadow_model is None:
            self.shadow_model = copy.deepcopy(model)
            self.pool = ThreadPoolExecutor(1, "validation")
            self.copy_on_worker = not any(True for _ in model.buffers())

    def start(self, model: nn.Module, ema: EMAModel, **pending: Any) -> None:
        """Validate `ema`'s weights on the worker; `pending`: PendingEpochEnd's fields but
        the future, with `state` the trainer's `state_dict()` (live tensors).

        The worker first copies the EMA weights into the shadow model and `state` into a
        snapshot, then validates; the trainer calls `wait_for_copies()` before its next
        optimizer step, the first thing that changes them, so the copies overlap that step's
        forward and backward. A model with buffers (which a forward may change, e.g.
        BatchNorm statistics) is copied here instead.
        """
        assert self.pending is None, "expected the previous validation collected first"
        self._prepare(model)
        self.overlapped += 1
        state, stage, shadow = pending.pop("state"), pending["stage"], self.shadow_model
        copied = threading.Event() if self.copy_on_worker else None

        def copies() -> dict[str, Any]:
            ema.copy_to(shadow)
            return snapshot(state)

        snapped = None if copied else copies()

        def copy_then_validate() -> tuple[dict[str, Any], float]:
            nonlocal snapped
            if copied is not None:
                try:
                    snapped = copies()
                finally:
                    copied.set()
            return snapped, self.validator.loss_of(shadow, stage)

        self.copying = copied
        self.pending = PendingEpochEnd(future=self.pool.submit(copy_then_validate), **pending)

    def wait_for_copies(self) -> None:
        """Return once the worker has copied what `start` gave it (at once if nothing is
        being copied); call it before anything changes the weights or the optimizer."""
        if self.copying is not None:
            self.copying.wait()
            self.copying = None

    def collect(self) -> tuple[PendingEpochEnd, float]:
        """The pending epoch end (its `state` a snapshot) and its validation loss (waits)."""
        pending, self.pending = self.pending, None
        pending.state, loss = pending.future.result()
        return pending, loss

    def close(self) -> None:
        """Stop the worker; later passes (`trainer.validate()` after training) run in line."""
        self.enabled = False
        if self.pool is not None:
            self.pool.shutdown(wait=True)
