"""From a checkpoint to samples and metrics: load the EMA model, integrate its ODE, score it.

Shared by `flowctl sample`, `flowctl eval` and `flowctl plot`. The model lives in the
normalized space of its training data; samples leave `generate` de-normalized (raw data
units), while path energy, trajectories and x_0 stay in the model's space, where the
Benamou-Brenier bound of `normalized_path_energy` holds.

Example:
    loaded = load_flow_model(find_checkpoint("mlp-icfm-moons-none"))
    x_1, info = generate(loaded, 1000, solver="rk4", steps=20, seed=0, batch_size=4096)
    result = evaluate(loaded, heldout_data(loaded.config)[0], solver="euler", steps=100, seed=0)
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from study.data.normalize import denormalize, normalize
from study.data.toy import source_like
from study.errors import UsageError
from study.flow_matching.metrics import (
    EvalResult,
    median_bandwidths,
    metric_floor,
    mmd_rbf,
    normalized_path_energy,
    path_straightness,
    wasserstein2,
)
from study.flow_matching.solvers import SOLVERS, integrate
from study.runs.checkpoint import read_checkpoint, write_atomic
from study.runs.paths import EVAL_JSON

log = logging.getLogger("flowctl")

MAX_TRAJECTORY_TIMES = 201  # enough points for straightness and plots, bounded memory


@dataclass
class LoadedModel:
    """A checkpoint ready to sample: model in eval mode (EMA weights), config, stats."""

    model: nn.Module
    config: dict[str, Any]
    stats: dict[str, Tensor]  # {"mean": [D], "std": [D]} of the training split
    dim: int
    path: Path  # the checkpoint file
    wandb_run_id: str | None
    wandb_project: str | None
    run_dir: Path  # the folder holding the checkpoint (eval.json, PNGs go here)


@dataclass
class Generation:
    """What `generate` reports besides the samples.

    nfe: velocity evaluations per sample (the most any batch needed, for dopri5);
    path_energy: Tensor[n], int_0^1 |v|^2 dt in the normalized space;
    x_0: Tensor[n, D], the source draws (normalized space);
    trajectory: Tensor[K, B, D] for the first batch (normalized space, at most
    MAX_TRAJECTORY_TIMES times), and times: Tensor[K]; both None unless asked for.
    """

    nfe: int
    path_energy: Tensor
    x_0: Tensor
    trajectory: Tensor | None = None
    times: Tensor | None = None


def load_flow_model(path: str | Path, device: str | torch.device = "cpu", *,
                    model: nn.Module | None = None, warn=None) -> LoadedModel:
    """Read a checkpoint (weights_only) and rebuild its velocity network with EMA weights.

    The network is built by networks.build_network from the checkpoint's config; `model`:
    a freshly built network of the right shape to load the weights into instead (for a
    class defined in a script, which no import path reaches)."""
    from study.flow_matching.networks import build_network, network_spec

    path = Path(path)
    payload = read_checkpoint(path)
    config = dict(payload.get("config") or {})
    stats = payload.get("normalization_stats") or {}
    if not isinstance(stats.get("mean"), Tensor) or not isinstance(stats.get("std"), Tensor):
        raise UsageError(f"{path} has no normalization stats (mean, std); cannot de-normalize samples")
    stats = {"mean": stats["mean"].float().flatten(), "std": stats["std"].float().flatten()}
    dim = stats["mean"].numel()
    spec = network_spec(config)
    if model is None:
        model = build_network(config, dim, warn=warn or _log_warning, run=path.parent.name)
    try:  # the EMA shadow holds the floating-point tensors; anything else comes from the model
        model.load_state_dict({**payload["model_state_dict"], **(payload.get("ema_shadow") or {})})
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else type(err).__name__)
        hint = ("" if config.get("network") else "; a run trained from Python on its own class "
                "loads with study.load_run(RUN, model=YourNet(...))")
        raise UsageError(f"{path}: its weights do not fit a {spec.name} model ({_args_text(spec.args)}"
                         f"dim {dim}): {detail}{hint}") from None
    return LoadedModel(model=model.to(device).eval(), config=config, stats=stats, dim=dim,
                       path=path, wandb_run_id=payload.get("wandb_run_id"),
                       wandb_project=payload.get("wandb_project") or config.get("wandb_project"),
                       run_dir=path.parent)


def _args_text(args: dict[str, Any]) -> str:
    return "".join(f"{key} {value}, " for key, value in args.items())


def _log_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def check_generation_args(*, n: int, solver: str, steps: int, batch_size: int = 1) -> None:
    """Validate before any checkpoint is read, so bad flags fail fast."""
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
    for name, value in (("n", n), ("steps", steps), ("batch-size", batch_size)):
        if value <= 0:
            raise UsageError(f"--{name} must be a positive integer, got {value}")


def generate(loaded: LoadedModel, n: int, *, solver: str, steps: int, seed: int,
             batch_size: int = 4096, device: str | torch.device = "cpu",
             return_trajectory: bool = False) -> tuple[Tensor, Generation]:
    """n samples [n, D] in raw data units (on the CPU), deterministic given `seed`.

    x_0 comes from the run's source distribution (drawn on the CPU with its own generator,
    so the same seed gives the same x_0 on any device), then dx_t/dt = v(x_t, t) is solved
    from t=0 to 1 in batches of `batch_size` with `integrate`.
    """
    check_generation_args(n=n, solver=solver, steps=steps, batch_size=batch_size)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    like = torch.empty(n, loaded.dim)
    x_0 = source_like(loaded.config.get("source", "gaussian"), like, generator, generator)
    model = loaded.model.to(device)

    def velocity(x_t: Tensor, t: Tensor) -> Tensor:
        return model(x_t, t)

    x_1, energies, nfe = [], [], 0
    trajectory = times = None
    for start in range(0, n, batch_size):
        keep = return_trajectory and start == 0
        result = integrate(velocity, x_0[start:start + batch_size].to(device), solver=solver,
                           steps=steps, return_trajectory=keep)
        x_1.append(result.x_1.cpu())
        energies.append(result.path_energy.cpu())
        nfe = max(nfe, result.nfe)
        if keep:
            index = _subsample(len(result.times), MAX_TRAJECTORY_TIMES)
            trajectory, times = result.trajectory[index].cpu(), result.times[index].cpu()
    samples = denormalize(torch.cat(x_1), loaded.stats)
    return samples, Generation(nfe=nfe, path_energy=torch.cat(energies), x_0=x_0,
                               trajectory=trajectory, times=times)


def _subsample(length: int, most: int) -> Tensor:
    """At most `most` evenly spaced indices into range(length), both ends included."""
    if length <= most:
        return torch.arange(length)
    return torch.linspace(0, length - 1, most).round().long().unique()


def heldout_data(config: dict[str, Any], data_file: str | Path | None = None) -> tuple[Tensor, str]:
    """Raw held-out rows [M, D] and a description: --data FILE, else the test split of the
    run's dataset, else its val split."""
    from study.data.dataset import FlowDataset, resolve_dataset

    if data_file is not None:
        dataset = FlowDataset(data_file)
        return dataset.x, f"{data_file} ({dataset.n} rows)"
    name = config.get("dataset", "moons")
    try:
        splits = resolve_dataset(name, seed=int(config.get("seed", 0)),
                                 args=config.get("dataset_args"),
                                 val_fraction=float(config.get("val_fraction", 0.1)))
    except UsageError as err:
        raise UsageError(f"{err}; pass the held-out data with --data FILE") from None
    split, rows = ("test", splits.test) if splits.test is not None else ("val", splits.val)
    return rows, f"{split} split of {splits.source} ({len(rows)} rows)"


def check_finite(samples: Tensor, path: str | Path) -> None:
    """UsageError (one line) when generated samples hold NaN or Inf: never scored or written,
    since a file or a score of NaNs looks like a result."""
    if not bool(samples.isfinite().all()):
        raise UsageError(f"the samples from {path} hold NaN or Inf (its weights are not finite, "
                         "or the solver diverged: try more --steps); nothing written")


def evaluate(loaded: LoadedModel, data_raw: Tensor, *, n: int = 1000, solver: str = "euler",
             steps: int = 100, seed: int = 0, batch_size: int = 4096,
             device: str | torch.device = "cpu") -> EvalResult:
    """Score `n` generated samples against `n` held-out rows (data_raw: Tensor[M, D], raw).

    W2 and MMD are in raw data units; the floor is the same pair of metrics between two
    disjoint n-row subsets of the data. Path energy, NPE and straightness are measured in
    the model's normalized space, with NPE's W2 taken between x_0 and the normalized data.
    MMD's length scales are metrics.MEDIAN_MULTIPLES x the median pairwise distance of the n
    held-out rows, shared by the model's score and its floor. The run's eval_fn, if it has
    one, scores the same samples and rows (`user`).
    """
    from study.flow_matching.user_metrics import user_metric

    check_generation_args(n=n, solver=solver, steps=steps, batch_size=batch_size)
    if data_raw.ndim != 2 or data_raw.shape[1] != loaded.dim:
        raise UsageError(f"the held-out data has shape {tuple(data_raw.shape)} but the checkpoint "
                         f"{loaded.path} was trained on dimension {loaded.dim}")
    if len(data_raw) < 2:
        raise UsageError(f"the held-out data has {len(data_raw)} row; need at least 2")
    n = min(n, len(data_raw))
    generator = torch.Generator().manual_seed(seed)
    x_1_data = data_raw[torch.randperm(len(data_raw), generator=generator)[:n]].float()
    samples, info = generate(loaded, n, solver=solver, steps=steps, seed=seed,
                             batch_size=batch_size, device=device, return_trajectory=True)
    check_finite(samples, loaded.path)
    bandwidths = median_bandwidths(x_1_data)
    floor = metric_floor(data_raw.float(), n, generator, bandwidths=bandwidths)
    w2_source = wasserstein2(info.x_0, normalize(x_1_data, loaded.stats))
    metric = user_metric(loaded.config)
    result = EvalResult(
        w2=wasserstein2(samples, x_1_data),
        mmd=mmd_rbf(samples, x_1_data, bandwidths=bandwidths),
        nfe=info.nfe,
        path_energy=info.path_energy.double().mean().item(),
        npe=normalized_path_energy(info.path_energy, w2_source) if w2_source > 0 else None,
        straightness=path_straightness(info.trajectory, info.times),
        w2_floor=floor["w2"], mmd_floor=floor["mmd"], n=n, solver=solver, steps=steps,
        user=metric(samples, x_1_data) if metric is not None else {})
    return result


def write_eval_json(folder: str | Path, result: dict[str, Any]) -> Path:
    """Write `{folder}/eval.json` atomically (temp file + os.replace); returns its path."""
    path = Path(folder) / EVAL_JSON
    write_atomic(path, (json.dumps(result, indent=2) + "\n").encode())
    return path


def eval_record(loaded: LoadedModel, result: EvalResult | dict[str, Any], *, data: str,
                seed: int) -> dict[str, Any]:
    """The eval.json object: the metrics (an EvalResult, or eval_draws' summary with every
    draw) plus what was evaluated, on what, and when."""
    metrics = result if isinstance(result, dict) else result.to_dict()
    return {**metrics, "seed": seed, "run": loaded.run_dir.name,
            "checkpoint": str(loaded.path), "data": data,
            "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def log_eval_to_wandb(folder: str | Path, wandb_run_id: str | None, project: str | None,
                      metrics: dict[str, Any], *, config: dict[str, Any] | None = None) -> bool:
    """Add `eval/*` to the summary of the run's own wandb run (same id, resume="allow").

    Mode: $WANDB_MODE, else the run's own (run.json), else offline. Skipped (False) without
    a run id or when disabled; a wandb failure is one warning (WandbTracker's guard).
    """
    from study.runs.status import RunStatusFile
    from study.runs.tracking import WandbTracker, resolve_wandb_mode

    if not wandb_run_id:
        return False
    mode = resolve_wandb_mode(None, RunStatusFile(Path(folder)).load_previous().get("wandb_mode"))
    if mode == "disabled":
        return False
    summary = {f"eval/{key}": value for key, value in metrics.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    config = config or {}
    tracker = WandbTracker(mode)
    tracker.start(project=project or "flow-matching-study", group=config.get("group", "default"),
                  name=Path(folder).name, config=config, run_dir=Path(folder), run_id=wandb_run_id)
    if tracker.run is None:
        return False
    tracker.finish(summary=summary)
    return tracker.status == "ok"
