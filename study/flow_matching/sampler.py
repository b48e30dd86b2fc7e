"""Which rows make up each minibatch: the one place a distributed sampler would go.

Each epoch draws one permutation of the training rows from a seeded CPU generator and cuts
it into `len // batch_size` full batches (the last partial batch is dropped so every step
sees the same batch size, which OT pairing and fused kernels like). The generator's state
at the start of an epoch plus the batch index pin the data position exactly, so a run
stopped mid-epoch resumes on the very next batch.
"""

from __future__ import annotations

import torch


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

    def start_epoch(self, device: torch.device) -> torch.Tensor:
        """Remember the generator state, then draw this epoch's permutation ([num_rows], on device)."""
        self.epoch_start_state = self.generator.get_state()
        return torch.randperm(self.num_rows, generator=self.generator).to(device)

    def state_dict(self, *, mid_epoch: bool) -> torch.Tensor:
        """Generator state to restore: the current epoch's start if stopping mid-epoch."""
        return self.epoch_start_state if mid_epoch else self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
        self.epoch_start_state = state
