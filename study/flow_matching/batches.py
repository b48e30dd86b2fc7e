"""The training batches of a run: which rows, and every random draw that turns them into a
flow-matching batch (augmentation, x_0, t, eps, the pairing).

Draw order per batch, fixed so that seeded generators reproduce it: x_1 = the epoch
permutation's next rows, augmented (noise generator); x_0 from the source (noise, or the
source generator for a built-in 2-D source; pre-coupled rows for reflow); t (t generator);
eps (noise generator); then the flow's pairing (OT generator). `state_dict()` holds every
generator's state, so a resumed run draws exactly what an uninterrupted one would.

Under torchrun every rank draws the whole global batch (`batch_size` rows: the same random
numbers on every rank, keyed by the position in the global batch, never by rank), pairs it
whole, and trains on its slice: rows [r B/W, (r+1) B/W). So 1, 2 or 8 ranks see the same
global batches, OT pairs over the global batch, and a resume at another world size
continues the same data stream.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from study.data.augment import augment
from study.data.toy import source_like
from study.data.training_data import TrainingData
from study.flow_matching.sampler import EpochSampler, make_generators
from study.seeds import stream_seed


@dataclass
class FlowBatch:
    """One paired batch: x_0, x_1, eps [B, D] and t [B], on the training device."""

    x_0: Tensor
    x_1: Tensor
    t: Tensor
    eps: Tensor

    def split(self, parts: int) -> list[FlowBatch]:
        """`parts` equal micro-batches, row order kept (for gradient accumulation)."""
        if parts == 1:
            return [self]
        chunks = zip(*(tensor.chunk(parts) for tensor in (self.x_0, self.x_1, self.t, self.eps)),
                     strict=True)
        return [FlowBatch(*chunk) for chunk in chunks]


@dataclass
class DrawnBatch:
    """A global batch drawn but not yet paired, with what is needed to finish it later."""

    index: int
    rows: Tensor  # [B] global row ids
    x_0: Tensor
    x_1: Tensor
    t: Tensor
    eps: Tensor
    plan: Any = None  # the pairing plan, or a Future of it (solved on a pairing worker)
    states_before: dict[str, Tensor] | None = None  # the draw generators before this batch


DRAW_GENERATORS = ("t", "noise", "source")  # the OT generator is only used when pairing


class BatchMaker:
    """Draws the run's batches in order from its seeded generators, on the training thread.

    With `pairing_workers` threads (off by default; the same numbers either way, only
    sooner), the OT plans of the next batches are solved while the current step trains: the
    next `pairing_workers` batches are drawn now and their plans submitted (POT releases
    the GIL while it solves).
    """

    def __init__(self, data: TrainingData, *, batch_size: int, seed: int, source: str,
                 device: torch.device, rank: int = 0, world_size: int = 1,
                 pairing_workers: int = 0):
        assert batch_size % world_size == 0, f"expected batch_size divisible by {world_size}"
        self.data, self.batch_size, self.source, self.device = data, batch_size, source, device
        share = batch_size // world_size
        self.rank_rows = slice(rank * share, (rank + 1) * share)
        self.sampler = EpochSampler(len(data.train), batch_size, seed=stream_seed(seed, "data"))
        self.generators = make_generators(seed, device)
        self.permutation: Tensor | None = None
        self.pool = ThreadPoolExecutor(pairing_workers, "ot-pairing") if pairing_workers else None
        self.depth = pairing_workers  # batches drawn ahead, at most
        self.ahead: deque[DrawnBatch] = deque()  # drawn, their plans being solved

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def start_epoch(self) -> None:
        """Draw this epoch's permutation of the training rows."""
        assert not self.ahead, "expected no batch drawn ahead across an epoch boundary"
        self.permutation = self.sampler.start_epoch(self.device)

    def draw(self, batch_index: int, stage, flow) -> FlowBatch:
        """This rank's slice of global batch `batch_index` of the current epoch, under
        `stage`, paired by `flow` over the whole global batch."""
        if self.pool is None or not flow.solves_a_plan:
            drawn = self._draw_unpaired(batch_index, stage)  # here, now
            drawn.plan = flow.pairing_plan(drawn.x_0, drawn.x_1)
        else:
            drawn = self._next_from_ahead(batch_index, stage, flow)
        mine = self.rank_rows
        plan = drawn.plan.result() if isinstance(drawn.plan, Future) else drawn.plan
        x_0, x_1 = flow.apply_pairing(drawn.x_0, drawn.x_1, plan, self.generators["ot"])
        if mine.stop - mine.start == self.batch_size:
            return FlowBatch(x_0, x_1, drawn.t, drawn.eps)
        return FlowBatch(x_0[mine], x_1[mine], drawn.t[mine], drawn.eps[mine])

    def _draw_unpaired(self, batch_index: int, stage) -> DrawnBatch:
        gens = self.generators
        states = {name: gens[name].get_state() for name in DRAW_GENERATORS} if self.depth else None
        rows = self.permutation[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
        x_1 = augment(stage.aug, self.data.train_rows(rows), std=stage.aug_std, generator=gens["noise"])
        x_0 = (self.data.train_x0[rows] if self.data.train_x0 is not None
               else source_like(self.source, x_1, gens["noise"], gens["source"]))
        t = torch.rand(x_1.shape[0], generator=gens["t"], device=self.device)
        eps = torch.randn(x_1.shape, generator=gens["noise"], device=self.device)
        return DrawnBatch(batch_index, rows, x_0, x_1, t, eps, states_before=states)

    def _next_from_ahead(self, batch_index: int, stage, flow) -> DrawnBatch:
        """Batch `batch_index`, with the batches after it (up to `depth`, within the epoch)
        drawn and their plans submitted to the pairing workers."""
        assert not self.ahead or self.ahead[0].index == batch_index, (
            f"expected batch {self.ahead[0].index} next, got {batch_index}")
        start = self.ahead[-1].index + 1 if self.ahead else batch_index
        for index in range(start, min(batch_index + self.depth, self.steps_per_epoch - 1) + 1):
            drawn = self._draw_unpaired(index, stage)
            drawn.plan = self.pool.submit(flow.pairing_plan, drawn.x_0, drawn.x_1)
            self.ahead.append(drawn)
        return self.ahead.popleft()

    def close(self) -> None:
        """Stop the pairing workers (a plan under way is left to finish on its own)."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def state_dict(self, *, mid_epoch: bool) -> dict[str, Any]:
        """{generator name: state}; `data` is the epoch's start when stopping mid-epoch.

        Batches drawn ahead are given back: the draw generators' states are those from
        before the first of them, so a resume draws them again, identically.
        """
        states = {name: generator.get_state() for name, generator in self.generators.items()}
        if self.ahead:
            states.update(self.ahead[0].states_before)
        states["data"] = self.sampler.state_dict(mid_epoch=mid_epoch)
        return states

    def load_state_dict(self, states: dict[str, Any]) -> None:
        assert not self.ahead, "expected no batch drawn ahead when loading a state"
        self.sampler.load_state_dict(states["data"])
        for name, generator in self.generators.items():
            generator.set_state(states[name])
