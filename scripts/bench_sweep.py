"""What `flowctl sweep` costs over a shell loop: 8 tiny points, two at a time, both ways.

Contenders, taking turns round after round (so load from other processes spreads over both),
each into a fresh checkpoint root:
- **shell**: `xargs -P K` over the `flowctl train --resume auto key=value...` commands that
  `flowctl sweep --launcher print` prints (the same child processes, no launcher);
- **sweep**: `flowctl sweep GRID --parallel K --plain`.
Both get the same OMP_NUM_THREADS (cores // K, the sweep's own split), so the ratio is the
launcher's overhead alone; `--unsplit` adds a third contender, the shell loop without it (each
torch then takes every core). The ratio is sweep's wall time over shell's in the same round;
the table gives the median ratio over rounds and its spread (max - min). The bound is 1.1x.

Usage: python scripts/bench_sweep.py [--points 8] [--parallel 2] [--epochs 5] [--rounds 3] [--unsplit]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOWCTL = [sys.executable, "-m", "study.cli.app"]


def write_grid(folder: Path, points: int, epochs: int) -> Path:
    """A grid of `points` seeds of a tiny 2-D run (moons, mlp 2x16)."""
    grid = folder / "bench.yaml"
    grid.write_text(yaml.safe_dump({
        "base": {"dataset": "moons", "width": 16, "depth": 2, "batch_size": 256,
                 "epochs": epochs, "patience": 0},
        "grid": {"seed": list(range(points))}}))
    return grid


def thread_env(threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return env if threads is None else {**env, "OMP_NUM_THREADS": str(threads),
                                        "MKL_NUM_THREADS": str(threads)}


def run_shell(grid: Path, root: Path, parallel: int, threads: int | None) -> float:
    """The print launcher's commands (with this interpreter) under `xargs -P`."""
    listing = subprocess.run([*FLOWCTL, "sweep", str(grid), "--launcher", "print", "--ckpt-dir",
                              str(root), "--wandb-mode", "disabled"], capture_output=True,
                             text=True, check=True, cwd=REPO_ROOT).stdout
    commands = [line.replace("flowctl ", " ".join(FLOWCTL) + " ", 1)
                for line in listing.splitlines()]
    script = "\n".join(commands) + "\n"
    started = time.perf_counter()
    # setsid: each child in its own session, as the sweep starts them. On a quiet machine it
    # changes nothing; under load, Linux's autogroup scheduler shares the CPU per session.
    subprocess.run(["xargs", "-P", str(parallel), "-I", "{}", "sh", "-c",
                    "setsid {} >/dev/null 2>&1"],
                   input=script, text=True, check=True, cwd=REPO_ROOT, env=thread_env(threads))
    return time.perf_counter() - started


LAUNCHER_CPU: list[float] = []  # the sweep process's own CPU seconds, children excluded


def own_cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` itself (/proc/PID/stat fields 14, 15), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_sweep(grid: Path, root: Path, parallel: int, threads: int | None) -> float:
    started = time.perf_counter()
    process = subprocess.Popen([*FLOWCTL, "sweep", str(grid), "--parallel", str(parallel),
                                "--plain", "--ckpt-dir", str(root), "--wandb-mode", "disabled"],
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, env=thread_env(threads))
    cpu = 0.0
    while process.poll() is None:  # the last reading before it exits (a zombie keeps its stat)
        cpu = own_cpu_seconds(process.pid) or cpu
        time.sleep(0.1)
    wall = time.perf_counter() - started
    assert process.returncode == 0, f"flowctl sweep exited {process.returncode}"
    LAUNCHER_CPU.append(cpu)
    return wall


def check_finished(root: Path, points: int) -> None:
    import json

    statuses = [json.loads(p.read_text())["status"] for p in root.glob("*/run.json")]
    assert statuses.count("finished") == points, f"expected {points} finished runs, got {statuses}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unsplit", action="store_true",
                        help="also time the shell loop without OMP_NUM_THREADS")
    args = parser.parse_args()
    threads = max(1, len(os.sched_getaffinity(0)) // args.parallel)
    contenders = {"shell": (run_shell, threads), "sweep": (run_sweep, threads)}
    if args.unsplit:
        contenders["shell, no thread split"] = (run_shell, None)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as temp:
        folder = Path(temp)
        grid = write_grid(folder, args.points, args.epochs)
        for round_index in range(args.rounds):
            order = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
            walls = {}
            for name in order:
                root = folder / f"{name.replace(' ', '').replace(',', '-')}-{round_index}"
                runner, contender_threads = contenders[name]
                walls[name] = runner(grid, root, args.parallel, contender_threads)
                check_finished(root, args.points)
                times[name].append(walls[name])
            ratios.append(walls["sweep"] / walls["shell"])
            print(f"round {round_index + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in walls.items())
                  + f", sweep/shell {ratios[-1]:.3f}", file=sys.stderr)
    print(f"{args.points} points x {args.epochs} epochs (moons, mlp 2x16), --parallel "
          f"{args.parallel}, OMP_NUM_THREADS={threads}, {args.rounds} rounds; "
          f"Python {platform.python_version()}")
    print("| contender | median wall s | min | max |")
    print("|---|---:|---:|---:|")
    for name, walls in times.items():
        print(f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f} | {max(walls):.2f} |")
    print(f"\nsweep / shell: median {statistics.median(ratios):.3f}x "
          f"(spread {max(ratios) - min(ratios):.3f}); bound 1.1x")
    sweep_wall = statistics.median(times["sweep"])
    print(f"the launcher's own CPU time: median {statistics.median(LAUNCHER_CPU):.2f}s per "
          f"sweep ({statistics.median(LAUNCHER_CPU) / sweep_wall:.1%} of one core over its wall time)")


if __name__ == "__main__":
    main()
