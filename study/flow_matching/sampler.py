"""Where the randomness of a run comes from: which rows make up each minibatch, the seeded
generators for t, noise, OT and sources, and the fixed validation draws.

Each epoch draws one permutation of the training rows from a seeded CPU generator and cuts
it into `len // batch_size` full batches (the last partial batch is dropped so every step
sees the same batch size, which OT pairing and fused kernels like). The generator's state
at the start of an epoch plus the batch index pin the data position exactly, so a run
stopped mid-epoch resumes on the very next batch. Every other draw comes from its own
generator (`make_generators`), whose state goes into the checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor

from study.data.toy import source_like
from study.seeds import stream_generator

# The training draws, each its own stream (study.seeds); their states go into checkpoints.
# `data` (the epoch permutations) is the EpochSampler's. `val` (the fixed validation
# batches, also their OT pairing) is regenerated from the seed, never saved.
TRAINING_STREAMS = ("t", "noise", "ot", "source")
DEVICE_GENERATORS = ("t", "noise")  # drawn on the training device; the rest on the CPU


def make_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """Seeded generators for t, noise (x_0, eps, augmentation), OT sampling and sources."""
    return {name: stream_generator(seed, name, device=device if name in DEVICE_GENERATORS else "cpu")
            for name in TRAINING_STREAMS}


class EpochSampler:
    """Seeded per-epoch permutations of `num_rows` rows, cut into batches of `batch_size`."""

    def __init__(self, num_rows: int, batch_size: int, seed: int):
        assert num_rows >= batch_size > 0, f"expected num_rows >= batch_size, got {num_rows} < {batch_size}"
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_start_state = self.generator.get_state()

    @property
    def batches_per_epoch(self) -> int:
        return self.num_rows // self.batch_size

    def start_epoch(self, device: torch.device) -> Tensor:
        """Remember the generator state, then draw this epoch's permutation ([num_rows], on device)."""
        self.epoch_start_state = self.generator.get_state()
        return torch.randperm(self.num_rows, generator=self.generator).to(device)

    def state_dict(self, *, mid_epoch: bool) -> Tensor:
        """Generator state to restore: the current epoch's start if stopping mid-epoch."""
        return self.epoch_start_state if mid_epoch else self.generator.get_state()

    def load_state_dict(self, state: Tensor) -> None:
        self.generator.set_state(state)
        self.epoch_start_state = state


def fixed_validation_batches(val_x: Tensor, *, seed: int, source: str, batch_size: int,
                             device: torch.device, val_x0: Tensor | None = None
                             ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """(x_0, x_1, t, eps) batches drawn once from the seed, so val/loss is comparable across
    epochs (and identical on CPU and GPU: drawn on the CPU, then moved).

    val_x: [N, D] normalised validation rows; `val_x0`: pre-coupled sources (reflow)
    instead of fresh draws. Each batch holds at most `batch_size` rows.
    """
    generator = stream_generator(seed, "val")
    x_1 = val_x.cpu()
    x_0 = val_x0.cpu() if val_x0 is not None else source_like(source, x_1, generator, generator)
    t = torch.rand(len(x_1), generator=generator)
    eps = torch.randn(x_1.shape, generator=generator)
    return [tuple(part[i:i + batch_size].to(device) for part in (x_0, x_1, t, eps))
            for i in range(0, len(x_1), batch_size)]
