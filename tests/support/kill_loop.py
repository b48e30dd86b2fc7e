"""The kill / resume loop: SIGKILL a real training process at random moments, resume it,
and check that every checkpoint still loads and no temp file outlives the next start.

Used by tests/faults/test_crash.py (a few kills) and scripts/fault_soak.py (hundreds).
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from study.runs.checkpoint import TEMP_MARK
from tests.support.helpers import metrics_rows, state_differences
from tests.support.zygote import Child, Zygote


@dataclass
class LoopReport:
    kills: int = 0
    resumes: int = 0
    restarts: int = 0  # `train` again: the kill came before the first checkpoint existed
    kills_before_first_save: int = 0  # killed during start-up, before writing anything
    temps_left_by_kills: int = 0  # kills that left a .*.tmp-PID file (killed mid-write)
    temps_not_removed: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    steps_at_kill: list[int] = field(default_factory=list)
    final_returncode: int | None = None
    final_stderr: str = ""


def checkpoint_problems(run: Path) -> list[str]:
    """Every .pt in `run` that does not load with weights_only=True (or is incomplete)."""
    import torch

    problems = []
    for path in sorted(run.glob("*.pt")):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or "model_state_dict" not in payload:
                problems.append(f"{path.name}: not a checkpoint dict")
        except Exception as err:  # any failure to load is what we are counting
            problems.append(f"{path.name}: {type(err).__name__}: {str(err)[:200]}")
    return problems


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _temps_of(run: Path, pid: int) -> list[Path]:
    return sorted(run.glob(f".*{TEMP_MARK}{pid}")) if run.is_dir() else []


def _wait_until(condition, child: Child, timeout: float) -> bool:
    """Poll until `condition()`; False if the child exited first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {child.pid} made no progress in {timeout:.0f} s")
        time.sleep(0.002)
    return True


def kill_resume_loop(zygote: Zygote, run: Path, train_argv: list[str], *, kills: int,
                     rng: random.Random, env: dict | None = None, max_delay_s: float = 0.25,
                     early_kill_share: float = 0.2, timeout: float = 120.0) -> LoopReport:
    """Start `flowctl TRAIN_ARGV` (which must write to `run`), SIGKILL it `kills` times at
    random moments, resuming with `flowctl resume RUN` each time, then resume to the end.

    Most kills wait for the segment's first own checkpoint write (last.pt gets a new inode)
    and then a random `uniform(0, max_delay_s)`; a share `early_kill_share` are sent at a
    random moment of start-up instead (reading the checkpoint, taking the lock, ...).
    After every kill each .pt must load; once the next segment has written a checkpoint, the
    killed pid's temp files must be gone.
    """
    report = LoopReport()
    last = run / "last.pt"
    argv = list(train_argv)
    pending_temps: list[Path] = []  # left by killed writers; the next start removes them
    while report.kills < kills:
        child = zygote.run(*argv, env=env)
        early = rng.random() < early_kill_share
        delay = rng.uniform(0, max_delay_s)
        before = _inode(last)
        if early:
            time.sleep(delay)
        else:
            wrote = _wait_until(lambda before=before: _inode(last) not in (None, before),
                                child, timeout)
            if wrote:  # this segment has started properly: earlier temp files must be gone
                report.temps_not_removed += [str(p) for p in pending_temps if p.exists()]
                pending_temps = []
            else:
                break  # finished before its first save: the run is too short for more kills
            time.sleep(delay)
        if child.poll() is not None:
            break  # it finished within the delay: nothing left to kill
        child.kill()
        code = child.wait(timeout)
        if code == 0:
            break  # it finished just before the signal landed
        if code != -signal.SIGKILL:
            raise RuntimeError(f"pid {child.pid} ended with {code}, not by SIGKILL: {child.stderr}")
        report.kills += 1
        report.kills_before_first_save += _inode(last) == before
        left = _temps_of(run, child.pid)
        report.temps_left_by_kills += bool(left)
        pending_temps += left
        report.corrupted += [f"after kill {report.kills}: {p}" for p in checkpoint_problems(run)]
        if last.exists():
            with contextlib.suppress(Exception):
                import torch

                report.steps_at_kill.append(int(torch.load(last, weights_only=True)["global_step"]))
        has_checkpoint = last.exists() or (run / "best.pt").exists()
        if has_checkpoint:
            argv = ["resume", str(run), *_resume_flags(train_argv)]
            report.resumes += 1
        else:
            argv = list(train_argv)
            report.restarts += 1
    final = zygote.run(*(argv if argv[0] == "resume" else train_argv), env=env)
    report.final_returncode = final.wait(timeout)
    report.final_stderr = final.stderr
    if pending_temps:
        report.temps_not_removed += [str(p) for p in pending_temps if p.exists()]
    report.corrupted += [f"at the end: {p}" for p in checkpoint_problems(run)]
    return report


def _resume_flags(train_argv: list[str]) -> list[str]:
    """Flags that are not part of the run's config and must be repeated on resume."""
    flags = []
    for name in ("--wandb-mode", "--ckpt-dir"):
        if name in train_argv:
            flags += [name, train_argv[train_argv.index(name) + 1]]
    return flags + (["--plain"] if "--plain" in train_argv else [])


def run_differences(reference: Path, resumed: Path) -> list[str]:
    """What differs between the reference run folder and the killed-and-resumed one."""
    import torch

    differences = []
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(folder / name, weights_only=True) for folder in (reference, resumed))
        differences += [f"{name}: {d}" for d in state_differences(a, b)]
    if metrics_rows(reference) != metrics_rows(resumed):
        differences.append("metrics.csv rows differ")
    return differences
