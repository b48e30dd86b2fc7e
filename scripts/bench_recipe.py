"""Choose flowctl's default recipe by measurement: one factor at a time around a base config.

Trains the base config (flowctl's defaults plus `--base KEY=VALUE ...`) and, for every
`--vary KEY=V1,V2,...`, the base with KEY set to each value, on each dataset and seed; then
scores each best.pt (what `flowctl eval` reads) with `evaluate_draws`: `--draws` source
draws of `--n` samples (Euler, 100 steps: `flowctl eval`'s default) against as many
held-out rows, and the floor (the same metric between two disjoint n-row halves of the
held-out rows). Reported: W2 and MMD mean ± std over all seeds x draws, W2 / floor, the
training time and its optimizer steps per second.

Held-out rows: for a built-in 2-D dataset, 2n fresh rows from its generator (a stream
independent of every split); for a split folder or file, its test split (else val), and n
is capped at half of it.

Usage: python scripts/bench_recipe.py [--datasets moons] [--flow icfm] [--seeds 0,1]
       [--draws 3] [--n 3000] [--base epochs=80 sigma=0.01] [--vary lr=0.002,0.005]
       [--vary normalize=none,standard] [--threads 1] [--out-dir DIR] [--write FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from study.data import toy  # noqa: E402
from study.flow_matching.config_load import config_from_dict  # noqa: E402
from study.flow_matching.eval_draws import evaluate_draws  # noqa: E402
from study.flow_matching.evaluate import heldout_data, load_flow_model  # noqa: E402
from study.flow_matching.launch import RunOptions, run_training  # noqa: E402

HELDOUT_SEED = 987_654  # the built-ins' held-out stream: no split uses this generator seed
NESTED_KEYS = {"scheduler": "type", "final_lr_scale": "final_lr_scale"}  # -> scheduler.*


def parse_assignments(tokens: list[str]) -> dict[str, list]:
    """["lr=0.001,0.002", "normalize=none"] -> {"lr": [0.001, 0.002], "normalize": ["none"]}."""
    out = {}
    for token in tokens:
        key, sep, values = token.partition("=")
        if not sep or not values:
            raise SystemExit(f"expected KEY=VALUE[,VALUE...], got {token!r}")
        out[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return out


def to_config(settings: dict, *, dataset: str, flow: str, seed: int, name: str):
    """A validated TrainingConfig; scheduler / final_lr_scale set the scheduler mapping."""
    raw = {"dataset": dataset, "flow": flow, "seed": seed, "run_name": name, "log_every": 100,
           "group": "bench_recipe"}
    scheduler = {}
    for key, value in settings.items():
        if key in NESTED_KEYS:
            scheduler[NESTED_KEYS[key]] = value
        else:
            raw[key] = value
    if scheduler:
        raw["scheduler"] = scheduler
    return config_from_dict(raw, source="bench_recipe").validate()


def variants(base: dict, vary: dict[str, list], *, with_base: bool = True) -> list[tuple[str, dict]]:
    """[("base", base), ("KEY=V", base | {KEY: V}) ...] without repeating the base."""
    out = [("base", dict(base))] if with_base else []
    for key, values in vary.items():
        for value in values:
            if base.get(key) == value:
                continue
            out.append((f"{key}={value}", {**base, key: value}))
    return out


def heldout_rows(dataset: str, config: dict, n: int) -> torch.Tensor:
    if dataset in toy.TOY_DATASETS:
        return toy.TOY_DATASETS[dataset](2 * n, torch.Generator().manual_seed(HELDOUT_SEED))
    rows, _ = heldout_data(config)
    return rows


def run_one(label: str, settings: dict, dataset: str, seed: int, args, out_dir: Path) -> dict:
    name = f"{Path(dataset).name}-{label.replace('=', '_')}-s{seed}"
    config = to_config(settings, dataset=dataset, flow=args.flow, seed=seed, name=name)
    options = RunOptions(ckpt_dir=str(out_dir), device="cpu", wandb_mode="disabled", overwrite=True)
    result = run_training(config, options, warn=lambda message: None)
    loaded = load_flow_model(result["checkpoint_path"])
    rows = heldout_rows(dataset, loaded.config, args.n)
    n = min(args.n, len(rows) // 2)
    summary = evaluate_draws(loaded, rows, draws=args.draws, n=n, solver="euler", steps=100,
                             seed=1000 * seed)
    return {"dataset": dataset, "variant": label, "seed": seed, "steps": result["global_step"],
            "epochs_run": result["epochs_run"], "train_s": result["elapsed_s"], "n": n,
            "per_draw": summary["per_draw"]}


def mean_std(values: list[float], digits: int = 3) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "—"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def render(records: list[dict], args, command: str, elapsed_s: float) -> str:
    lines = [f"Produced by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d} in "
             f"{elapsed_s / 60:.1f} min; {platform.platform()}, {os.cpu_count()} CPU cores "
             f"(shared, load average {os.getloadavg()[0]:.1f} at the end), torch "
             f"{torch.__version__}, {torch.get_num_threads()} thread(s). Base: flowctl's "
             f"defaults + {json.dumps(args.base_settings)}; flow {args.flow}. W2 and MMD²: "
             f"mean ± std over {len(args.seeds)} seeds x {args.draws} draws, Euler 100 steps, "
             "best.pt (EMA weights).", "",
             "| dataset | variant | steps | train s | steps/s | W2 | W2 floor | W2 / floor | MMD² |",
             "|---|---|---|---|---|---|---|---|---|"]
    for dataset in args.datasets:
        for label in dict.fromkeys(r["variant"] for r in records):
            rows = [r for r in records if r["dataset"] == dataset and r["variant"] == label]
            if not rows:
                continue
            draws = [d for r in rows for d in r["per_draw"]]
            w2 = [d["w2"] for d in draws]
            floor = [d["w2_floor"] for d in draws]
            train_s = statistics.fmean(r["train_s"] for r in rows)
            steps = statistics.fmean(r["steps"] for r in rows)
            lines.append(
                f"| {Path(dataset).name} (n={rows[0]['n']}) | {label} | {steps:.0f} | "
                f"{train_s:.1f} | {steps / train_s:.0f} | {mean_std(w2)} | "
                f"{statistics.fmean(floor):.3f} | "
                f"{statistics.fmean(w2) / statistics.fmean(floor):.2f} | "
                f"{mean_std([d['mmd'] for d in draws], 4)} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="moons")
    parser.add_argument("--flow", default="icfm")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--base", nargs="*", default=[], help="KEY=VALUE on top of the defaults")
    parser.add_argument("--vary", action="append", default=[], help="KEY=V1,V2,...")
    parser.add_argument("--no-base", action="store_true", help="train only the --vary variants")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--write", default=None, help="append the markdown table to this file")
    args = parser.parse_args(argv)
    args.datasets = args.datasets.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.base_settings = {k: v[0] for k, v in parse_assignments(args.base).items()}
    vary = {}
    for token in args.vary:
        vary.update(parse_assignments([token]))
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bench_recipe-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "scripts/bench_recipe.py", *argv])
    started, records = time.perf_counter(), []
    for dataset in args.datasets:
        for label, settings in variants(args.base_settings, vary, with_base=not args.no_base):
            for seed in args.seeds:
                record = run_one(label, settings, dataset, seed, args, out_dir)
                records.append(record)
                w2 = [d["w2"] for d in record["per_draw"]]
                print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {Path(dataset).name} "
                      f"{label:24s} seed {seed}: W2 {mean_std(w2)} floor "
                      f"{record['per_draw'][0]['w2_floor']:.3f} ({record['steps']} steps, "
                      f"{record['train_s']:.1f}s)", flush=True)
                (out_dir / "results.json").write_text(json.dumps(records, indent=1))
    report = render(records, args, command, time.perf_counter() - started)
    print(report)
    if args.write:
        with open(args.write, "a") as handle:
            handle.write(report + "\n\n")
        print(f"appended to {args.write}; runs and results.json in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
