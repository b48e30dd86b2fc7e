"""Sample quality of flowctl against torchcfm, on the same data at equal steps and batch.

For each task (a built-in 2-D dataset, source N(0, I)), flow (I-CFM, OT-CFM) and seed:

- torchcfm (Tong et al.'s library, its 2-D tutorial recipe, copied faithfully): its
  `models.MLP(dim=2, time_varying=True)` (3 hidden layers of 64, SELU), Adam at its default
  lr 1e-3, constant LR, `ConditionalFlowMatcher(sigma=0.1)` or
  `ExactOptimalTransportConditionalFlowMatcher(sigma=0.1)`, no EMA, raw data, x_0 ~ N(0, I).
- flowctl with its defaults (only dataset, flow, seed, batch size and the number of epochs
  set; patience 0, so it runs every planned step), trained by `run_training`; its best.pt
  is scored, as `flowctl eval` does. When flowctl's default network is not 3x64 SELU, the
  same again with torchcfm's network (`--width 64 --depth 3 --activation selu`).

Both train on the same tensor (flowctl's train split for the seed: 20,000 rows), in
shuffled epochs of `--batch-size` rows; torchcfm runs exactly as many optimizer steps as
flowctl did (`--steps` rounded up to whole epochs). Both are scored by the same code
(`evaluate_draws`, dopri5 at rtol = atol = 1e-5): `--draws` draws x seeds of `--n` samples
against `--n` of 2n fresh held-out rows (a generator stream no split uses); the same draw
seeds for every model, so every model meets the same x_0 and the same held-out rows. The
floor is W2 between two disjoint n-row halves of the held-out rows. Reported: mean ± std
over seeds x draws, and `spread_verdict` of flowctl against torchcfm.

torchcfm is a benchmark-only dependency: `pip install --no-deps torchcfm` (it needs torch,
numpy and POT, which flowctl already has).

Usage: python scripts/bench_quality.py [--tasks 8gaussians,moons,checkerboard]
       [--flows icfm,otcfm] [--seeds 0,1] [--draws 3] [--n 3000] [--steps 3000]
       [--batch-size 256] [--threads 1] [--out-dir DIR] [--write FILE]
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
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from study.data import toy  # noqa: E402
from study.data.dataset import resolve_dataset  # noqa: E402
from study.flow_matching.config import TrainingConfig  # noqa: E402
from study.flow_matching.eval_draws import spread_verdict, summarize_draws  # noqa: E402
from study.flow_matching.evaluate import LoadedModel, evaluate, load_flow_model  # noqa: E402
from study.flow_matching.launch import RunOptions, run_training  # noqa: E402

HELDOUT_SEED = 987_654  # the held-out stream: no split uses this generator seed
TORCHCFM_SIGMA, TORCHCFM_LR = 0.1, 1e-3  # the tutorial's
PEER_NETWORK = {"width": 64, "depth": 3, "activation": "selu"}


def train_torchcfm(flow: str, train_rows: torch.Tensor, *, steps: int, batch_size: int,
                   seed: int) -> tuple[nn.Module, float]:
    """torchcfm's tutorial loop on `train_rows` [N, 2]; returns (velocity net, seconds)."""
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        ExactOptimalTransportConditionalFlowMatcher,
    )
    from torchcfm.models import MLP

    torch.manual_seed(seed)  # the net's init and torchcfm's t, eps and OT draws
    matcher = {"icfm": ConditionalFlowMatcher,
               "otcfm": ExactOptimalTransportConditionalFlowMatcher}[flow](sigma=TORCHCFM_SIGMA)
    model = MLP(dim=train_rows.shape[1], time_varying=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=TORCHCFM_LR)
    order = torch.Generator().manual_seed(seed)
    per_epoch = len(train_rows) // batch_size
    started, step = time.perf_counter(), 0
    while step < steps:
        permutation = torch.randperm(len(train_rows), generator=order)
        for batch in range(min(per_epoch, steps - step)):
            x1 = train_rows[permutation[batch * batch_size:(batch + 1) * batch_size]]
            optimizer.zero_grad()
            x0 = torch.randn_like(x1)
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
            vt = model(torch.cat([xt, t[:, None]], dim=-1))
            loss = torch.mean((vt - ut) ** 2)
            loss.backward()
            optimizer.step()
            step += 1
    return model.eval(), time.perf_counter() - started


class TimeConcat(nn.Module):
    """torchcfm's nets take [x, t] in one tensor; flowctl's solvers call v(x_t [B, D], t [B])."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x_t, t[:, None].to(x_t)], dim=-1))


def as_loaded(net: nn.Module, dim: int) -> LoadedModel:
    """A torchcfm net as flowctl's LoadedModel: raw data units (identity stats), N(0, I) source."""
    identity = {"mean": torch.zeros(dim), "std": torch.ones(dim)}
    return LoadedModel(model=TimeConcat(net).eval(), config={"source": "gaussian"}, stats=identity,
                       dim=dim, path=Path("torchcfm"), wandb_run_id=None, wandb_project=None,
                       run_dir=Path("."))


def train_flowctl(task: str, flow: str, seed: int, extra: dict, args, out_dir: Path,
                  label: str) -> tuple[Path, int, float]:
    """flowctl with its defaults; returns (best.pt, optimizer steps, seconds)."""
    per_epoch = len(resolve_dataset(task, seed=seed, val_fraction=0.1).train) // args.batch_size
    config = TrainingConfig(dataset=task, flow=flow, seed=seed, batch_size=args.batch_size,
                            epochs=math.ceil(args.steps / per_epoch), patience=0, log_every=100,
                            run_name=f"{task}-{flow}-{label}-s{seed}", group="bench_quality",
                            **extra).validate()
    options = RunOptions(ckpt_dir=str(out_dir), device="cpu", wandb_mode="disabled", overwrite=True)
    result = run_training(config, options, warn=lambda message: None)
    return Path(result["checkpoint_path"]), result["global_step"], result["elapsed_s"]


def score(loaded: LoadedModel, heldout: torch.Tensor, seed: int, args) -> list[dict]:
    """Per-draw W2/MMD/floors with dopri5; draw seeds 1000 * seed + i, shared by all models."""
    draws = []
    for draw_seed in range(1000 * seed, 1000 * seed + args.draws):
        result = evaluate(loaded, heldout, n=args.n, solver="dopri5", seed=draw_seed)
        draws.append({"seed": draw_seed, "w2": result.w2, "mmd": result.mmd,
                      "w2_floor": result.w2_floor, "mmd_floor": result.mmd_floor,
                      "nfe": result.nfe, "path_energy": result.path_energy, "npe": result.npe,
                      "straightness": result.straightness})
    return draws


def mean_std(values: list[float], digits: int = 3) -> str:
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def render(records: list[dict], args, command: str, elapsed_s: float, trainers: list[str]) -> str:
    lines = [f"Produced by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d} in "
             f"{elapsed_s / 60:.1f} min; {platform.platform()}, {os.cpu_count()} CPU cores "
             f"(shared, load average {os.getloadavg()[0]:.1f} at the end), torch "
             f"{torch.__version__}, torchcfm {__import__('torchcfm').__version__}, "
             f"{torch.get_num_threads()} thread(s).", "",
             f"{args.steps} steps planned (whole epochs; both sides run the same count), batch "
             f"{args.batch_size}; W2 and MMD² on n = {args.n} samples vs {args.n} held-out rows, "
             f"dopri5; mean ± std over {len(args.seeds)} seeds x {args.draws} draws. 'vs "
             "torchcfm': better or worse when the means differ by more than the larger std.", "",
             "| task | flow | steps | " + " | ".join(f"{t} W2" for t in trainers)
             + " | W2 floor | " + " | ".join(f"{t} vs torchcfm" for t in trainers[1:])
             + " | " + " | ".join(f"{t} MMD²" for t in trainers) + " |",
             "|" + "---|" * (4 + 2 * len(trainers) + len(trainers) - 1)]
    for task in args.tasks:
        for flow in args.flows:
            rows = {t: [r for r in records if (r["task"], r["flow"], r["trainer"]) == (task, flow, t)]
                    for t in trainers}
            if not all(rows.values()):
                continue
            summaries = {t: summarize_draws([d for r in rs for d in r["per_draw"]])
                         for t, rs in rows.items()}
            w2 = {t: [d["w2"] for r in rs for d in r["per_draw"]] for t, rs in rows.items()}
            mmd = {t: [d["mmd"] for r in rs for d in r["per_draw"]] for t, rs in rows.items()}
            floor = summaries["torchcfm"]["w2_floor"]
            lines.append(
                f"| {task} | {flow} | {rows['torchcfm'][0]['steps']} | "
                + " | ".join(mean_std(w2[t]) for t in trainers) + f" | {floor:.3f} | "
                + " | ".join(spread_verdict(summaries["torchcfm"], summaries[t]) for t in trainers[1:])
                + " | " + " | ".join(mean_std(mmd[t], 4) for t in trainers) + " |")
    train_s = {t: statistics.fmean(r["train_s"] for r in records if r["trainer"] == t)
               for t in trainers}
    lines += ["", "Mean training seconds per model: "
              + ", ".join(f"{t} {s:.1f}" for t, s in train_s.items()) + "."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="8gaussians,moons,checkerboard")
    parser.add_argument("--flows", default="icfm,otcfm")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--write", default=None, help="append the markdown table to this file")
    parser.add_argument("--from-json", nargs="*", default=None,
                        help="render the table from earlier results.json files (no training)")
    args = parser.parse_args(argv)
    args.tasks, args.flows = args.tasks.split(","), args.flows.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    unknown = [t for t in args.tasks if t not in toy.TOY_DATASETS]
    if unknown or not set(args.flows) <= {"icfm", "otcfm"}:
        parser.error(f"tasks: {', '.join(toy.TOY_DATASETS)}; flows: icfm, otcfm")
    torch.set_num_threads(args.threads)
    defaults = TrainingConfig()
    setups = {"flowctl": {}}
    if any(getattr(defaults, k) != v for k, v in PEER_NETWORK.items()):
        setups["flowctl 3x64"] = dict(PEER_NETWORK)
    trainers = ["torchcfm", *setups]
    command = shlex.join(["python", "scripts/bench_quality.py", *argv])
    if args.from_json is not None:
        records = [r for path in args.from_json for r in json.loads(Path(path).read_text())]
        args.seeds = sorted({r["seed"] for r in records})
        trainers = ["torchcfm", *dict.fromkeys(r["trainer"] for r in records if r["trainer"] != "torchcfm")]
        print(render(records, args, command, 0.0, trainers))
        return 0
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bench_quality-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    started, records = time.perf_counter(), []

    def note(record: dict) -> None:
        records.append(record)
        w2 = [d["w2"] for d in record["per_draw"]]
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {record['task']:12s} "
              f"{record['flow']:5s} {record['trainer']:12s} seed {record['seed']}: W2 "
              f"{mean_std(w2)} floor {record['per_draw'][0]['w2_floor']:.3f} "
              f"({record['steps']} steps, {record['train_s']:.1f}s)", flush=True)
        (out_dir / "results.json").write_text(json.dumps(records, indent=1))

    for task in args.tasks:
        heldout = toy.TOY_DATASETS[task](2 * args.n, torch.Generator().manual_seed(HELDOUT_SEED))
        for flow in args.flows:
            for seed in args.seeds:
                base = {"task": task, "flow": flow, "seed": seed}
                steps = None
                for label, extra in setups.items():
                    path, steps, train_s = train_flowctl(task, flow, seed, extra, args, out_dir,
                                                         label.replace(" ", "-"))
                    note({**base, "trainer": label, "steps": steps, "train_s": train_s,
                          "per_draw": score(load_flow_model(path), heldout, seed, args)})
                train_rows = resolve_dataset(task, seed=seed, val_fraction=0.1).train
                net, train_s = train_torchcfm(flow, train_rows, steps=steps,
                                              batch_size=args.batch_size, seed=seed)
                note({**base, "trainer": "torchcfm", "steps": steps, "train_s": train_s,
                      "per_draw": score(as_loaded(net, train_rows.shape[1]), heldout, seed, args)})
    report = render(records, args, command, time.perf_counter() - started, trainers)
    print(report)
    if args.write:
        with open(args.write, "a") as handle:
            handle.write(report + "\n\n")
        print(f"appended to {args.write}; runs and results.json in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
