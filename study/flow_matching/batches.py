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


class BatchMaker:
    def __init__(self, data: TrainingData, *, batch_size: int, seed: int, source: str,
                 device: torch.device, rank: int = 0, world_size: int = 1):
        assert batch_size % world_size == 0, f"expected batch_size divisible by {world_size}"
        self.data, self.batch_size, self.source, self.device = data, batch_size, source, device
        share = batch_size // world_size
        self.rank_rows = slice(rank * share, (rank + 1) * share)
        log_dir = os.environ.get("FLOWCTL_SAMPLE_LOG")
        self.sample_log = Path(log_dir) / f"rank{rank}.txt" if log_dir else None
        self.sampler = EpochSampler(len(data.train), batch_size, seed=derive_seed(seed, "data"))
        self.generators = make_generators(seed, device)
        self.permutation: Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def start_epoch(self) -> None:
        """Draw this epoch's permutation of the training rows."""
        self.permutation = self.sampler.start_epoch(self.device)

    def draw(self, batch_index: int, stage, flow) -> FlowBatch:
        """This rank's slice of global batch `batch_index` of the current epoch, under
        `stage`, paired by `flow` over the whole global batch."""
        gens = self.generators
        rows = self.permutation[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
        x_1 = augment(stage.aug, self.data.train[rows], std=stage.aug_std, generator=gens["noise"])
        x_0 = (self.data.train_x0[rows] if self.data.train_x0 is not None
               else source_like(self.source, x_1, gens["noise"], gens["source"]))
        t = torch.rand(x_1.shape[0], generator=gens["t"], device=self.device)
        eps = torch.randn(x_1.shape, generator=gens["noise"], device=self.device)
        x_0, x_1 = flow.pair(x_0, x_1, generator=gens["ot"])
        mine = self.rank_rows
        if self.sample_log is not None:
            with open(self.sample_log, "a") as handle:
                handle.write(" ".join(map(str, rows[mine].tolist())) + "\n")
        if mine.stop - mine.start == len(rows):
            return FlowBatch(x_0, x_1, t, eps)
        return FlowBatch(x_0[mine], x_1[mine], t[mine], eps[mine])

    def state_dict(self, *, mid_epoch: bool) -> dict[str, Any]:
        """{generator name: state}; `data` is the epoch's start when stopping mid-epoch."""
        states = {name: generator.get_state() for name, generator in self.generators.items()}
        states["data"] = self.sampler.state_dict(mid_epoch=mid_epoch)
        return states

    def load_state_dict(self, states: dict[str, Any]) -> None:
        self.sampler.load_state_dict(states["data"])
        for name, generator in self.generators.items():
            generator.set_state(states[name])
