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
continues the same data stream. Set $FLOWCTL_SAMPLE_LOG to a folder to have each rank
append the row ids it trains on (one line per step) to rank{r}.txt there (tests use it).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from study.data.augment import augment
from study.data.toy import source_like
from study.data.training_data import TrainingData
from study.flow_matching.sampler import EpochSampler, derive_seed, make_generators


@dataclass
class FlowBatch:
    """One paired batch: x_0, x_1, eps [B, D] and t [B], on the training device; `paths`:
    the flow's (x_t, u_t) of each of `split(len(paths))`'s micro-batches, when they were
    computed ahead (the same call on the same rows), else None."""

    x_0: Tensor
    x_1: Tensor
    t: Tensor
    eps: Tensor
    paths: list[tuple[Tensor, Tensor]] | None = None

    def split(self, parts: int) -> list[FlowBatch]:
        """`parts` equal micro-batches, row order kept (for gradient accumulation)."""
        if parts == 1:
            return [self]
        chunks = zip(*(tensor.chunk(parts) for tensor in (self.x_0, self.x_1, self.t, self.eps)),
                     strict=True)
        return [FlowBatch(*chunk) for chunk in chunks]

    def with_paths(self, flow, parts: int) -> FlowBatch:
        """This batch with the paths of its `parts` micro-batches computed (flow.path)."""
        self.paths = [flow.path(part.x_0, part.x_1, part.t, part.eps) for part in self.split(parts)]
        return self


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
    ready: FlowBatch | None = None  # the finished batch, paths included, if made ahead


DRAW_GENERATORS = ("t", "noise", "source")  # the OT generator is only used when pairing


class BatchMaker:
    """Draws the run's batches in order from its seeded generators.

    Ahead of the step, two ways (both off by default; the same numbers either way, only
    sooner): `pairing_workers` threads solve the OT plans of the next batches while the
    current step trains, and with `draw_ahead` one thread of its own makes the next batch
    (rows, augmentation, x_0, t, eps, and for a flow without a plan its micro-batches' paths:
    ~5% of a 1024-D step) so the training thread does not. Draws stay in batch order: one
    drawing thread, or the training thread.
    """

    def __init__(self, data: TrainingData, *, batch_size: int, seed: int, source: str,
                 device: torch.device, rank: int = 0, world_size: int = 1,
                 pairing_workers: int = 0, draw_ahead: bool = False, micro_batches: int = 1):
        assert batch_size % world_size == 0, f"expected batch_size divisible by {world_size}"
        self.data, self.batch_size, self.source, self.device = data, batch_size, source, device
        share = batch_size // world_size
        self.rank_rows = slice(rank * share, (rank + 1) * share)
        log_dir = os.environ.get("FLOWCTL_SAMPLE_LOG")
        self.sample_log = Path(log_dir) / f"rank{rank}.txt" if log_dir else None
        self.sampler = EpochSampler(len(data.train), batch_size, seed=derive_seed(seed, "data"))
        self.generators = make_generators(seed, device)
        self.permutation: Tensor | None = None
        self.pool = ThreadPoolExecutor(pairing_workers, "ot-pairing") if pairing_workers else None
        self.drawer = ThreadPoolExecutor(1, "batch-draw") if draw_ahead else None
        self.depth = max(pairing_workers, int(draw_ahead))  # batches drawn ahead, at most
        self.micro_batches = micro_batches  # how the update splits a batch (paths drawn ahead)
        self.ahead: deque[tuple[int, Future[DrawnBatch]]] = deque()  # (batch index, its draw)

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
        if self.drawer is None and (self.pool is None or not flow.solves_a_plan):
            drawn = self._draw_and_plan(batch_index, stage, flow)  # here, now
        else:
            drawn = self._next_from_ahead(batch_index, stage, flow)
        mine = self.rank_rows
        if self.sample_log is not None:
            with open(self.sample_log, "a") as handle:
                handle.write(" ".join(map(str, drawn.rows[mine].tolist())) + "\n")
        if drawn.ready is not None:
            return drawn.ready
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

    def _draw_and_plan(self, batch_index: int, stage, flow) -> DrawnBatch:
        """Batch `batch_index` drawn, its plan solved on a pairing worker (a Future) where
        there are workers for this flow, else here. On the drawing thread, a flow without a
        plan (its pairing is the identity and draws nothing) gets its paths computed too:
        the whole FlowBatch is ready."""
        drawn = self._draw_unpaired(batch_index, stage)
        if self.pool is not None and flow.solves_a_plan:
            drawn.plan = self.pool.submit(flow.pairing_plan, drawn.x_0, drawn.x_1)
        else:
            drawn.plan = flow.pairing_plan(drawn.x_0, drawn.x_1)
        whole = self.rank_rows.stop - self.rank_rows.start == self.batch_size
        if self.drawer is not None and not flow.solves_a_plan and whole:
            batch = FlowBatch(drawn.x_0, drawn.x_1, drawn.t, drawn.eps)
            drawn.ready = batch.with_paths(flow, self.micro_batches)
        return drawn

    def _next_from_ahead(self, batch_index: int, stage, flow) -> DrawnBatch:
        """Batch `batch_index`, with the batches after it (up to `depth`, within the epoch)
        drawn (on the drawing thread if there is one) and their plans submitted."""
        assert not self.ahead or self.ahead[0][0] == batch_index, (
            f"expected batch {self.ahead[0][0]} next, got {batch_index}")
        start = self.ahead[-1][0] + 1 if self.ahead else batch_index
        for index in range(start, min(batch_index + self.depth, self.steps_per_epoch - 1) + 1):
            if self.drawer is not None:
                self.ahead.append((index, self.drawer.submit(self._draw_and_plan, index, stage, flow)))
            else:
                done: Future[DrawnBatch] = Future()
                done.set_result(self._draw_and_plan(index, stage, flow))
                self.ahead.append((index, done))
        return self.ahead.popleft()[1].result()

    def close(self) -> None:
        """Stop the drawing thread and the pairing workers (a draw or a plan under way is
        left to finish on its own)."""
        for executor in (self.drawer, self.pool):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    def state_dict(self, *, mid_epoch: bool) -> dict[str, Any]:
        """{generator name: state}; `data` is the epoch's start when stopping mid-epoch.

        Batches drawn ahead are given back: the draw generators' states are those from
        before the first of them, so a resume draws them again, identically.
        """
        states = {name: generator.get_state() for name, generator in self.generators.items()}
        if self.ahead:
            states.update(self.ahead[0][1].result().states_before)
        states["data"] = self.sampler.state_dict(mid_epoch=mid_epoch)
        return states

    def load_state_dict(self, states: dict[str, Any]) -> None:
        assert not self.ahead, "expected no batch drawn ahead when loading a state"
        self.sampler.load_state_dict(states["data"])
        for name, generator in self.generators.items():
            generator.set_state(states[name])
