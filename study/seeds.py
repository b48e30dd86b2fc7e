"""The one rule that turns a run's seed into the seed of one stream of random draws.

Every generator flowctl seeds (the data splits, the training draws of rows, t, noise, OT
and sources, the fixed validation batches, the evaluation draws, reflow's pairs) takes
`stream_seed(seed, purpose)`: 60 bits of sha256 over `{purpose}:seed={seed}[:{detail}]`.
Streams are independent across purposes, seeds and details, and adding a purpose never
moves another. Leaf module: no torch at import, nothing of flowctl.
"""

from __future__ import annotations

import hashlib


def stream_seed(seed: int, purpose: str, detail: str | None = None) -> int:
    """The seed of the `purpose` stream (`t`, `noise`, `val`, `moons`, ...) of run seed `seed`;
    `detail` names a sub-stream (`split=train`)."""
    text = f"{purpose}:seed={seed}" + (f":{detail}" if detail else "")
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def stream_generator(seed: int, purpose: str, detail: str | None = None, *, device="cpu"):
    """A torch.Generator on `device` seeded with stream_seed(seed, purpose, detail)."""
    import torch

    return torch.Generator(device).manual_seed(stream_seed(seed, purpose, detail))
