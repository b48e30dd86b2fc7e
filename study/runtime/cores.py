"""The CPU cores this process may keep busy, and its torch intra-op threads.

`cpu_share` is $FLOWCTL_CPU_SHARE (a sweep point's share, set by the sweep's local launcher)
or every usable core; it sizes the OT pairing workers' default and torchrun's
OMP_NUM_THREADS per rank, so a process does not count its neighbours' cores as spare.
"""

from __future__ import annotations

import os

from study.errors import UsageError

# Below this many parameters a CPU step is a chain of small ops, and a second intra-op thread
# costs more in hand-offs than it computes (measured: 2 threads made the 2-D default run 3-4x
# slower on 2 cores; the 1024-D width-1024 model gained 1.5x from 2 threads).
SMALL_MODEL_PARAMETERS = 1_000_000


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_share() -> int:
    """The cores this process may keep busy: $FLOWCTL_CPU_SHARE (a sweep point's share, set by
    the sweep) when it is a positive integer, else every usable core."""
    share = os.environ.get("FLOWCTL_CPU_SHARE", "")
    return int(share) if share.isdigit() and int(share) > 0 else usable_cpus()


def set_cpu_threads(device, parameters: int, asked: int | None) -> int:
    """Intra-op threads for a CPU run on `device` (a torch.device): `asked` (--threads), else
    $OMP_NUM_THREADS if set, else 1 for a small model and torch's default for a large one.
    Returns the number."""
    import torch

    if device.type != "cpu":
        return torch.get_num_threads()
    if asked is not None:
        if asked < 1:
            raise UsageError(f"--threads must be >= 1, got {asked}")
        torch.set_num_threads(asked)
    elif not os.environ.get("OMP_NUM_THREADS") and parameters < SMALL_MODEL_PARAMETERS:
        torch.set_num_threads(1)
    return torch.get_num_threads()
