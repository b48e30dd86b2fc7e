"""How many points run at once on this machine, and how its cores and GPUs are split.

Default `--parallel`: one point per visible GPU when there are GPUs (CUDA_VISIBLE_DEVICES,
else `nvidia-smi -L`); otherwise one point per usable CPU core, capped so that each point
has POINT_MEMORY_GIB of available memory. Each point gets OMP_NUM_THREADS = cores // K
(at least 1; an OMP_NUM_THREADS already set wins) and FLOWCTL_CPU_SHARE = the same share (so
a point does not count its neighbours' cores as spare: `runtime.cores.cpu_share`), and with GPUs,
CUDA_VISIBLE_DEVICES = one GPU, round-robin over the slots. No torch: the launcher stays light.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from study.runtime.cores import usable_cpus

POINT_MEMORY_GIB = 1.0  # a CPU point: interpreter + torch + a small model and its data


@dataclass
class Slots:
    parallel: int  # points at once
    threads: int  # OMP_NUM_THREADS per point
    gpus: list[str]  # GPU ids to hand out, one per slot, round-robin ([]: CPU)
    reason: str  # how `parallel` was chosen, one line

    def env_for(self, slot: int) -> dict[str, str]:
        env = {"FLOWCTL_CPU_SHARE": str(self.threads)}
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(self.threads)
            env["MKL_NUM_THREADS"] = str(self.threads)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip() and gpu.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    lines = [line for line in listing.stdout.splitlines() if line.startswith("GPU ")]
    return [str(index) for index in range(len(lines))] if listing.returncode == 0 else []


def available_memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def plan_slots(parallel: int | None, *, device: str = "auto") -> Slots:
    """The slots for `--parallel` (None: the default above)."""
    cpus = usable_cpus()
    gpus = [] if device == "cpu" else visible_gpus()
    if parallel is not None:
        reason = f"--parallel {parallel}"
    elif gpus:
        parallel, reason = len(gpus), f"one point per GPU ({len(gpus)} visible)"
    else:
        memory = available_memory_gib()
        by_memory = int(memory // POINT_MEMORY_GIB) if memory is not None else cpus
        parallel = max(1, min(cpus, by_memory))
        reason = f"one point per CPU core ({cpus} usable"
        reason += f", {memory:.0f} GiB available)" if memory is not None else ")"
    return Slots(parallel=parallel, threads=max(1, cpus // parallel), gpus=gpus, reason=reason)
