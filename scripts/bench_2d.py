"""Reference check against Tong et al. 2023 (TMLR), "Improving and generalizing flow-based
generative models with minibatch optimal transport", Sec. 5.1 (2-D tasks).

Trains icfm, otcfm, fm, vp, sbcfm, and reflow (with that seed's icfm run as the teacher) on
N->8gaussians, N->moons, N->scurve and moons->8gaussians, with the paper's setup: mlp 3x64
SELU, AdamW lr 1e-3 (weight decay 1e-5, as in torchcfm's configs), batch 512, sigma 0.1
(sbcfm: 1.0, torchcfm's `sigma_min` for it). fm and vp are skipped for the moons source:
their paths assume x_0 ~ N(0, I) (fm shrinks x_0 towards 0, vp is variance preserving).
The step budget is CPU-sized (--steps), far below the paper's; flowctl's defaults add a
100-step warmup, cosine decay and grad clipping at 1; best.pt (EMA weights, --ema-decay) is
scored. `--batch-size 256` quarters the cost of exact OT pairing on a small CPU.

Each model is scored with study.flow_matching.evaluate on `--n-eval` samples against as
many rows of the seed's real test split: W2 (dopri5, rtol = atol = 1e-5), its NFE and NPE
(normalized path energy, in the model's space), and W2 after 2 and 4 Euler steps. The floor
is W2 between two disjoint halves of the test data: what a perfect model would score.
Reported: mean ± std over seeds. The claims checked: OT-CFM's NPE far below I-CFM's, and
OT-CFM's few-step W2 better than I-CFM's.

Usage: python scripts/bench_2d.py [--quick] [--seeds 0,1,2] [--steps 3000] [--n-eval 1000]
       [--tasks N-8gaussians,moons-8gaussians] [--methods icfm,otcfm] [--out-dir DIR]
       [--write docs/results.md] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from study.data.dataset import resolve_dataset  # noqa: E402
from study.flow_matching.config import TrainingConfig  # noqa: E402
from study.flow_matching.evaluate import evaluate, generate, heldout_data, load_flow_model  # noqa: E402
from study.flow_matching.launch import RunOptions, run_training  # noqa: E402
from study.flow_matching.metrics import wasserstein2  # noqa: E402

# task name -> (source, dataset)
TASKS = {
    "N-8gaussians": ("gaussian", "8gaussians"),
    "N-moons": ("gaussian", "moons"),
    "N-scurve": ("gaussian", "scurve"),
    "moons-8gaussians": ("moons", "8gaussians"),
}
METHODS = ("icfm", "otcfm", "fm", "vp", "sbcfm", "reflow")
GAUSSIAN_SOURCE_ONLY = ("fm", "vp")
SIGMA = {"sbcfm": 1.0}  # everything else: 0.1
LR, WEIGHT_DECAY, WIDTH, DEPTH = 1e-3, 1e-5, 64, 3
FEW_STEPS = (2, 4)
QUICK = {"seeds": "0", "steps": 300, "n_eval": 500, "tasks": "N-8gaussians,moons-8gaussians"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['tasks']}, 1 seed, {QUICK['steps']} steps")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per model")
    parser.add_argument("--batch-size", type=int, default=512, help="the paper's 512 by default")
    parser.add_argument("--ema-decay", type=float, default=0.99,
                        help="EMA of the weights (scored); 0.99 suits a few thousand steps")
    parser.add_argument("--n-eval", type=int, default=1000, help="samples (and test rows) per score")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out-dir", default=None, help="run folders and results.json [default: a temp dir]")
    parser.add_argument("--write", default=None,
                        help="also put the report in this markdown file, replacing its own section")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if f"--{key.replace('_', '-')}" not in argv:
                setattr(args, key, value)
    args.seeds = [int(s) for s in str(args.seeds).split(",")]
    args.tasks = args.tasks.split(",")
    args.methods = args.methods.split(",")
    unknown = [t for t in args.tasks if t not in TASKS] + [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown task or method {unknown[0]!r}; tasks: {', '.join(TASKS)}; "
                     f"methods: {', '.join(METHODS)}")
    if "reflow" in args.methods and "icfm" not in args.methods:
        parser.error("reflow needs icfm in --methods (its teacher)")
    return args


def train_one(task: str, method: str, seed: int, args: argparse.Namespace,
              out_dir: Path) -> tuple[Path, float]:
    """Train one model; returns (best.pt, training seconds)."""
    source, dataset = TASKS[task]
    batch = args.batch_size
    steps_per_epoch = len(resolve_dataset(dataset, seed=seed, val_fraction=0.1).train) // batch
    teacher = (out_dir / f"{task}-icfm-s{seed}" / "best.pt") if method == "reflow" else None
    config = TrainingConfig(
        arch="mlp", width=WIDTH, depth=DEPTH, activation="selu", flow=method, dataset=dataset,
        source=source, teacher=str(teacher) if teacher else None, seed=seed, batch_size=batch,
        lr=LR, weight_decay=WEIGHT_DECAY, sigma=SIGMA.get(method, 0.1), ema_decay=args.ema_decay,
        epochs=math.ceil(args.steps / steps_per_epoch), patience=0, log_every=steps_per_epoch,
        run_name=f"{task}-{method}-s{seed}", group="bench_2d").validate()
    options = RunOptions(ckpt_dir=str(out_dir), device="cpu", wandb_mode="disabled", overwrite=True)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sbcfm's exact-OT fallback note
        result = run_training(config, options, warn=lambda message: None)
    return Path(result["checkpoint_path"]), time.perf_counter() - started


def score(checkpoint: Path, n_eval: int, seed: int) -> dict[str, float]:
    """W2/NFE/NPE with dopri5, W2 after FEW_STEPS Euler steps, and the data's W2 floor."""
    loaded = load_flow_model(checkpoint)
    data, _ = heldout_data(loaded.config)
    adaptive = evaluate(loaded, data, n=n_eval, solver="dopri5", seed=seed)
    row = {"w2": adaptive.w2, "nfe": adaptive.nfe, "npe": adaptive.npe,
           "w2_floor": adaptive.w2_floor}
    # The same x_0 and the same held-out rows as evaluate() draws for this seed; only W2 is
    # needed here, so skip evaluate()'s floor, MMD and trajectory.
    x_1_data = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n_eval]]
    for steps in FEW_STEPS:
        samples, _ = generate(loaded, len(x_1_data), solver="euler", steps=steps, seed=seed)
        row[f"w2_euler{steps}"] = wasserstein2(samples, x_1_data.float())
    return row


def mean_std(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


SECTION = "## 2-D reference check against Tong et al. 2023"


def write_section(path: Path, report: str) -> None:
    """Put `report` in place of the file's SECTION (up to the next `## `), or append it."""
    text = path.read_text() if path.exists() else ""
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip() + ("\n\n" if text else "") + report
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + report.rstrip() + "\n" + (text[end:] if end >= 0 else "")
    path.write_text(text)


def render(records: list[dict], args: argparse.Namespace, command: str, elapsed_s: float) -> str:
    """The markdown report: setup, the table, the floor, and the claims check."""
    label = " (QUICK SMOKE RUN: 1 seed, few steps; not a reference result)" if args.quick else ""
    lines = [f"{SECTION}{label}", "",
             f"Produced by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d} in "
             f"{elapsed_s / 60:.1f} min.", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores (shared), "
             f"{platform.processor() or platform.machine()}; Python {platform.python_version()}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), CPU only.", "",
             f"Setup: mlp {DEPTH}x{WIDTH} SELU, AdamW lr {LR:g} (weight decay {WEIGHT_DECAY:g}), "
             f"batch {args.batch_size}, {args.steps} steps per model (the paper: batch 512, ~20k "
             "steps), warmup 100 + cosine decay, grad clip 1, EMA "
             f"{args.ema_decay:g} (best.pt scored); sigma 0.1, sbcfm sigma 1.0; "
             f"reflow: 1-rectified flow from the same seed's icfm (pairs by rk4, 50 steps). Seeds: "
             f"{', '.join(map(str, args.seeds))}. Scores on {args.n_eval} samples vs {args.n_eval} "
             "rows of the seed's test split; mean ± std over seeds. W2 and NFE: dopri5 "
             "(rtol = atol = 1e-5); NPE = |mean path energy - W2(x_0, x_1)^2| / W2(x_0, x_1)^2 in "
             "the model's normalized space; W2 @2/@4: Euler with 2 / 4 steps. fm and vp are not "
             "run for the moons source (their paths assume Gaussian x_0).", "",
             "| task | method | W2 (dopri5) | NPE | NFE | W2 @2 Euler | W2 @4 Euler | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        for method in args.methods:
            rows = [r for r in records if r["task"] == task and r["method"] == method]
            if not rows:
                continue
            lines.append(
                f"| {task} | {method} | {mean_std([r['w2'] for r in rows])} | "
                f"{mean_std([r['npe'] for r in rows if r['npe'] is not None])} | "
                f"{statistics.mean(r['nfe'] for r in rows):.0f} | "
                f"{mean_std([r['w2_euler2'] for r in rows])} | "
                f"{mean_std([r['w2_euler4'] for r in rows])} | "
                f"{statistics.mean(r['train_s'] for r in rows):.0f} |")
    lines += ["", "Data floor (W2 between two disjoint test halves of the same size):", "",
              "| task | W2 floor |", "|---|---|"]
    for task in args.tasks:
        floors = [r["w2_floor"] for r in records if r["task"] == task]
        if floors:
            lines.append(f"| {task} | {mean_std(floors)} |")
    lines += ["", "## The paper's qualitative claims", "", *claims(records, args.tasks), ""]
    return "\n".join(lines)


def claims(records: list[dict], tasks: list[str]) -> list[str]:
    """One line per claim: on how many tasks it holds, with the ratios."""
    def mean_of(task: str, method: str, key: str) -> float | None:
        values = [r[key] for r in records if r["task"] == task and r["method"] == method
                  and r[key] is not None]
        return statistics.mean(values) if values else None

    out = []
    for key, what in (("npe", "NPE"), ("w2_euler2", "W2 after 2 Euler steps"),
                      ("w2_euler4", "W2 after 4 Euler steps"), ("w2", "W2 (dopri5)")):
        pairs = [(t, mean_of(t, "otcfm", key), mean_of(t, "icfm", key)) for t in tasks]
        pairs = [(t, ot, i) for t, ot, i in pairs if ot is not None and i is not None]
        if not pairs:
            continue
        wins = sum(ot < i for _, ot, i in pairs)
        detail = ", ".join(f"{t} {ot:.3f} vs {i:.3f}" for t, ot, i in pairs)
        out.append(f"- OT-CFM's {what} is below I-CFM's on {wins} of {len(pairs)} tasks "
                   f"(otcfm vs icfm: {detail}).")
    return out


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bench_2d-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "scripts/bench_2d.py", *argv])
    started, records = time.perf_counter(), []
    for seed in args.seeds:  # sequential: one model at a time, one thread each
        for task in args.tasks:
            source = TASKS[task][0]
            for method in args.methods:
                if method in GAUSSIAN_SOURCE_ONLY and source != "gaussian":
                    continue
                checkpoint, train_s = train_one(task, method, seed, args, out_dir)
                row = {"task": task, "method": method, "seed": seed, "train_s": train_s,
                       **score(checkpoint, args.n_eval, seed)}
                records.append(row)
                print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {task:17s} {method:6s} "
                      f"seed {seed}: W2 {row['w2']:.3f} NPE {row['npe']:.3f} NFE {row['nfe']} "
                      f"W2@2 {row['w2_euler2']:.3f} W2@4 {row['w2_euler4']:.3f} "
                      f"(train {train_s:.0f}s)", flush=True)
                (out_dir / "results.json").write_text(json.dumps(records, indent=1))
    report = render(records, args, command, time.perf_counter() - started)
    print(report)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        write_section(Path(args.write), report)
        print(f"wrote {args.write}; runs and results.json in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
