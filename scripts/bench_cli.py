"""How fast the CLI answers: `flowctl --help`, `list-runs` over 1,000 runs, `inspect-ckpt` of 1.6 GB.

Every number is the median wall time of a fresh subprocess (interpreter start included),
after one untimed warm-up run so the page cache is warm for everyone; the commands take
turns, round after round, so load from other processes spreads over all of them. Ratios are
paired: the median over rounds of (command / baseline) within the same round. Baselines:
`python -c pass`, `python -c "import typer, rich"` (what any Typer CLI pays),
`python -c "import torch"` and a plain `torch.load` (no mmap) of the same checkpoint.
`inspect-ckpt` runs twice: with the sha256 cache it fills on first use, and with the cache
unusable (every run hashes the whole file).

Usage: python scripts/bench_cli.py [--quick] [--runs 1000] [--ckpt-mb 1600] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STATUSES = ("finished", "finished", "failed", "preempted", "early_stopped", "running")


def flowctl_command() -> list[str]:
    script = Path(sys.executable).parent / "flowctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "study.cli.app"]


def write_runs(root: Path, count: int) -> None:
    """`count` run folders with a run.json each, as the trainer writes them."""
    now = datetime.now(timezone.utc)
    for index in range(count):
        name = f"mlp-icfm-moons-{index:05d}"
        run_dir = root / name
        run_dir.mkdir(parents=True)
        updated = now - timedelta(minutes=7 * index)
        status = STATUSES[index % len(STATUSES)]
        record = {
            "run_name": name, "group": f"sweep-{index % 7}", "status": status,
            "config": {"arch": "mlp", "flow": "icfm", "dataset": "moons", "epochs": 20,
                       "batch_size": 256, "lr": 1e-3, "width": 64, "depth": 3, "seed": index},
            "epoch": index % 21, "total_epochs": 20, "global_step": 80 * (index % 21),
            "stage": "main", "train_loss": 1.0 / (1 + index), "best_val_loss": 1.1 / (1 + index),
            "started_at": (updated - timedelta(minutes=5)).isoformat(),
            "updated_at": updated.isoformat(), "finished_at": None, "elapsed_s": 300.0,
            "pid": 4_000_000 + index, "host": "bench-node", "wandb_run_id": f"id{index:06d}",
            "wandb_mode": "offline", "wandb": "ok",
            "error": {"type": "RunFailed", "message": "non-finite loss"} if status == "failed" else None,
            "checkpoints": {"best": {"path": str(run_dir / "best.pt"), "size": 40_000}},
        }
        (run_dir / "run.json").write_text(json.dumps(record, indent=1))


def write_checkpoint(path: Path, megabytes: int) -> None:
    """A flowctl-shaped checkpoint whose model holds one float32 tensor of `megabytes` MB."""
    import torch

    numel = megabytes * 1_000_000 // 4
    checkpoint = {
        "format_version": 1, "epoch": 0, "global_step": 1, "batch_in_epoch": 0,
        "model_state_dict": {"weight": torch.zeros(numel)},
        "ema_shadow": {}, "optimizer_state_dict": {"state": {}, "param_groups": []},
        "optimizer_type": "AdamW", "scheduler_state_dict": {"last_epoch": 1, "_last_lr": [1e-3]},
        "best_loss": 1.0, "config": {"arch": "mlp"},
        "normalization_stats": {"mean": torch.zeros(2), "std": torch.ones(2)},
        "torch_version": str(torch.__version__), "flowctl_version": "bench",
    }
    torch.save(checkpoint, path)


def wall_seconds(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=REPO_ROOT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 runs, a 64 MB checkpoint, 3 repeats")
    parser.add_argument("--runs", type=int, default=None, help="run folders to list (default 1000)")
    parser.add_argument("--ckpt-mb", type=int, default=None, help="checkpoint size in MB (default 1600)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per command (default 7)")
    args = parser.parse_args()
    runs = args.runs or (200 if args.quick else 1000)
    ckpt_mb = args.ckpt_mb or (64 if args.quick else 1600)
    repeats = args.repeats or (3 if args.quick else 7)

    python, flowctl = sys.executable, flowctl_command()
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-") as scratch:
        root, ckpt = Path(scratch) / "runs", Path(scratch) / "big.pt"
        write_runs(root, runs)
        write_checkpoint(ckpt, ckpt_mb)
        env = {**os.environ, "FLOWCTL_CKPT_DIR": str(root), "COLUMNS": "160",
               "FLOWCTL_CACHE_DIR": str(Path(scratch) / "cache")}
        # A cache folder below a regular file cannot be created: every run hashes the file.
        no_cache = {**env, "FLOWCTL_CACHE_DIR": str(ckpt / "cache")}
        size = f"{ckpt.stat().st_size / 1e9:.1f} GB"
        plain_load = f"import torch; torch.load({str(ckpt)!r}, map_location='cpu', weights_only=True)"
        typer_rich = "python -c 'import typer, rich'"
        inspect = [*flowctl, "inspect-ckpt", str(ckpt), "--json", "--no-tensors"]
        # (label, command, baseline label, env, target)
        cases = [
            ("python -c pass", [python, "-c", "pass"], None, env, ""),
            (typer_rich, [python, "-c", "import typer, rich"], "python -c pass", env, ""),
            ("python -c 'import torch'", [python, "-c", "import torch"], "python -c pass", env, ""),
            (f"torch.load {size}, no mmap", [python, "-c", plain_load], "python -c 'import torch'",
             env, ""),
            ("flowctl --help", [*flowctl, "--help"], typer_rich, env, "<= 1.5x"),
            (f"flowctl list-runs ({runs} runs)", [*flowctl, "list-runs", "--ckpt-dir", str(root)],
             typer_rich, env, "<= 0.3 s"),
            (f"flowctl list-runs --json ({runs} runs)",
             [*flowctl, "list-runs", "--json", "--ckpt-dir", str(root)], typer_rich, env, "<= 0.3 s"),
            (f"flowctl inspect-ckpt --json --no-tensors ({size})", inspect, typer_rich, env,
             "<= 0.2 s"),
            (f"flowctl inspect-ckpt ({size}, table)", [*flowctl, "inspect-ckpt", str(ckpt)],
             typer_rich, env, ""),
            (f"  same --json, sha256 not cached ({size})", inspect, "python -c pass", no_cache, ""),
        ]
        for _, command, _, case_env, _ in cases:  # warm-up: page cache, .pyc files, sha256 cache
            wall_seconds(command, case_env)
        # Round-robin, so a burst of load on a shared machine hits every command alike.
        times: dict[str, list[float]] = {label: [] for label, *_ in cases}
        for round_index in range(repeats):
            for label, command, _, case_env, _ in cases:
                times[label].append(wall_seconds(command, case_env))
            print(f"  round {round_index + 1}/{repeats} done", file=sys.stderr)

    import torch

    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; "
          f"median of {repeats} rounds after a warm-up\n")
    width = max(len(label) for label, *_ in cases)
    print(f"| {'command':<{width}} | median s | paired ratio vs baseline | target |")
    print(f"|{'-' * (width + 2)}|---------:|:-------------------------|:-------|")
    for label, _, baseline, _, target in cases:
        ratio = "-"
        if baseline:
            paired = statistics.median(a / b for a, b in zip(times[label], times[baseline], strict=True))
            ratio = f"{paired:.2f}x {baseline}"
        print(f"| {label:<{width}} | {statistics.median(times[label]):8.3f} | {ratio} | {target} |")


if __name__ == "__main__":
    main()
