"""Several processes (torchrun): the process group, DDP, and the collectives the loop needs.

One process is the default and costs nothing here: every helper answers for a world of
one. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) the process group
uses nccl on CUDA and gloo on the CPU. What each rank computes:

- the same global batch (batches.py draws it whole on every rank and hands each rank its
  slice), so 1, 2 or 8 ranks train on the same data stream;
- its slice's gradient, averaged across ranks by DistributedDataParallel;
- the same validation and evaluation (identical EMA weights), so early stopping and
  best.pt agree without a collective;
- one all-reduce per log row (the window's loss), and the stop flag (`StopAgreement`).

Only rank 0 writes files (RunRecorder(enabled=ranks.is_main_process())).
"""

from __future__ import annotations

import contextlib
import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from study.runtime.ranks import is_distributed, rank, world_size

# A rank that stops answering (not one that dies: that closes its sockets at once) makes
# the others fail after this long instead of hanging for gloo's default 30 minutes.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


def init_process_group(device: torch.device) -> None:
    """Join torchrun's process group (nccl on CUDA, gloo otherwise); once per process.

    The store keys carry torchrun's restart count: after a restart (--max-restarts) the
    agent's store still holds the dead group's addresses, and gloo would connect to them
    (seen with torch 2.13: "connectFullMesh failed ... Connection refused").

    `torch.distributed.nn` is imported before the group exists: its functions take
    `group=group.WORLD` as a default argument, so importing it later (torch._dynamo does,
    through FSDP, when DDP first runs) would hold the group for the life of the process
    and `shutdown` could not free it.
    """
    if not is_distributed() or dist.is_initialized():
        return
    import torch.distributed.nn  # noqa: F401  (see above)

    backend = "nccl" if device.type == "cuda" else "gloo"
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size(),
                          is_master=not agent_store and rank() == 0, timeout=COLLECTIVE_TIMEOUT)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"flowctl/attempt-{attempt}", store),
                            rank=rank(), world_size=world_size(), timeout=COLLECTIVE_TIMEOUT,
                            device_id=device if device.type == "cuda" else None)


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The module the loop trains: DDP around `model` in a process group, else `model`."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def gradient_sync(model: nn.Module, sync: bool):
    """DDP: `no_sync()` for micro-batches that only accumulate; a no-op context otherwise."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of `values` (any shape), in place; identity in one process."""
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world_size()
    return values


def broadcast_from_main(value):
    """Rank 0's `value` on every rank (any picklable object)."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def shutdown() -> None:
    """Leave the process group and free it now, which joins gloo's worker threads.

    A gloo worker drops a finished collective's tensors a moment after the caller's wait
    returns. Should that moment fall in interpreter shutdown, the worker cannot take the
    GIL and the process aborts ("terminate called without an active exception", SIGABRT,
    pytorch/pytorch#190489; 1 run in ~10 of `train --nproc 2` here). Freed here, the
    group joins its workers while the interpreter is whole. The last reference must be
    the Python one (its destructor releases the GIL while it joins), hence the gc pass
    first: DDP holds the group in a reference cycle through its hooks.
    """
    if not dist.is_initialized():
        return
    group = dist.group.WORLD
    dist.destroy_process_group()
    gc.collect()
    del group  # the last reference: gloo joins its worker threads here


class StopAgreement:
    """All ranks stop at the same step when any rank was asked to stop.

    The signal handler only sets a local flag; every `every` steps the ranks all-reduce it
    (MAX) and stop together when any was set. In one process it is the local flag itself,
    checked every step. The cost per check is one small collective and one host sync
    (scripts/bench_ddp.py measures it), hence a check every few steps by default.
    """

    def __init__(self, device: torch.device, every: int = 1):
        self.every = every
        self.distributed = is_distributed()  # read once: the world does not change mid-run
        self._flag = torch.zeros((), dtype=torch.int32, device=device)

    def should_stop(self, requested: bool, step: int) -> bool:
        if not self.distributed:
            return requested
        if step % self.every:
            return False
        self._flag.fill_(int(requested))
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
        return bool(self._flag.item())
