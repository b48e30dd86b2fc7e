"""How fast `flowctl sweep status` and `sweep --launcher print` answer on a large grid.

A grid of --points points (seeds x learning rates, nothing trained), each command run as a
fresh process (interpreter start included) --repeats times after one untimed warm-up; the
median and spread of the wall time, beside `python -c "import typer"` as the floor any Typer
CLI pays. Targets (issue 24): status under 1 s, print under 2 s for 10,000 points, and print
creates no folder.

Usage: python scripts/bench_grid.py [--points 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

FLOWCTL = [sys.executable, "-m", "study.cli.app"]


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        seeds = max(1, args.points // 100)
        grid = folder / "grid.yaml"
        grid.write_text(yaml.safe_dump({"group": "big", "base": {"dataset": "moons", "epochs": 1},
                                        "grid": {"seed": list(range(seeds)),
                                                 "lr": [round(0.001 * (i + 1), 6) for i in range(args.points // seeds)]}}))
        root = folder / "runs"
        env = {**os.environ, "FLOWCTL_CKPT_DIR": str(root)}
        commands = {
            "python -c 'import typer'": [sys.executable, "-c", "import typer"],
            "flowctl sweep status": [*FLOWCTL, "sweep", "status", str(grid)],
            "flowctl sweep --launcher print": [*FLOWCTL, "sweep", str(grid), "--launcher", "print"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for argv in commands.values():
            timed(argv, env)  # warm-up
        for _ in range(args.repeats):  # in turns: load from other processes spreads over all
            for name, argv in commands.items():
                times[name].append(timed(argv, env))
        created = root.exists() and any(root.iterdir())
    print(f"{args.points} points, {args.repeats} rounds, load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':34} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, values in times.items():
        print(f"{name:34} {statistics.median(values):9.3f} {min(values):7.3f} {max(values):7.3f}")
    print(f"print created folders: {'yes' if created else 'no'}")


if __name__ == "__main__":
    main()
