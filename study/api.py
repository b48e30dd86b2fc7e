"""The notebook API: a finished (or running) run as a Python object.

    import study
    run = study.load_run("unet1d-icfm-moons-none")   # a run name, run folder or .pt file
    run.config["network"], run.status["status"], run.rows[-1]["val/loss"]
    x_1 = run.sample(2000, solver="rk4", steps=20, seed=0)   # Tensor [2000, D], data units
    run.evaluate(draws=5)["w2"]                              # what `flowctl eval` reports
    study.list_runs(status="finished")                       # what `list-runs --json` prints

Everything here goes through the functions the commands use (find_checkpoint,
load_flow_model, evaluate_draws, scan_runs), so the numbers are the same. torch is
imported when a model is first needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.runs.paths import BEST_FIRST, LAST_FIRST, METRICS_CSV, RUN_JSON, find_checkpoint


@dataclass
class Run:
    """One run: its checkpoint, config (a plain dict), run.json and metrics.csv rows.

    `model()`, `sample()` and `evaluate()` load the checkpoint's EMA weights on first use.
    """

    name: str
    path: Path  # the run folder
    checkpoint: Path  # the checkpoint file the model comes from
    config: dict[str, Any]
    status: dict[str, Any]  # run.json ({} when it has none)
    _model: Any = field(default=None, repr=False)  # an nn.Module to load the weights into
    _loaded: Any = field(default=None, repr=False)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """metrics.csv as a list of {column: float or int}, empty cells left out."""
        from study.runs.metrics_log import read_metrics

        csv_path = self.path / METRICS_CSV
        if not csv_path.is_file():
            return []
        return [{key: _number(value) for key, value in row.items() if value not in ("", None)}
                for row in read_metrics(csv_path)]

    def loaded(self, device: str = "cpu"):
        """evaluate.LoadedModel: the model (EMA weights, eval mode), its stats and config."""
        if self._loaded is None:
            from study.flow_matching.evaluate import load_flow_model

            self._loaded = load_flow_model(self.checkpoint, device, model=self._model)
        return self._loaded

    def model(self):
        """The velocity network with the EMA weights, in eval mode: model(x [B, D], t [B])
        -> [B, D] in the normalised space the run trained in."""
        return self.loaded().model

    def sample(self, n: int, *, solver: str = "euler", steps: int = 100, seed: int = 0,
               batch_size: int = 4096, device: str = "cpu"):
        """n samples, Tensor [n, D] in data units; the same as `flowctl sample` with these
        arguments."""
        from study.flow_matching.evaluate import generate

        samples, _ = generate(self.loaded(), n, solver=solver, steps=steps, seed=seed,
                              batch_size=batch_size, device=device)
        return samples

    def evaluate(self, *, n: int = 1000, solver: str = "euler", steps: int = 100,
                 seed: int = 0, draws: int = 5, data: str | os.PathLike | None = None,
                 write: bool = False) -> dict[str, Any]:
        """`flowctl eval`'s record (W2, MMD, floors, NFE, path energy, NPE, straightness,
        the eval_fn's metrics; means and stds over `draws`, and every draw). `write`: also
        write the run's eval.json, as the command does."""
        from study.flow_matching import evaluate as ev
        from study.flow_matching.eval_draws import evaluate_draws

        loaded = self.loaded()
        rows, description = ev.heldout_data(loaded.config, data)
        summary = evaluate_draws(loaded, rows, draws=draws, n=n, solver=solver, steps=steps,
                                 seed=seed)
        record = ev.eval_record(loaded, summary, data=description, seed=seed)
        if write:
            ev.write_eval_json(loaded.run_dir, record)
        return record


def load_run(name_or_path: str | os.PathLike, *, model=None, checkpoint: str = "best",
             ckpt_dir: str | os.PathLike | None = None) -> Run:
    """A run by name (under $FLOWCTL_CKPT_DIR or `ckpt_dir`), folder or checkpoint file.

    checkpoint: "best" (best.pt, else last.pt) or "last" (the other way round).
    model: a freshly built network to load the weights into, for a run whose class no
    import path reaches (defined in a script: `load_run(name, model=MyNet(2))`).
    UsageError (one line) when there is no such run or checkpoint.
    """
    from study.errors import UsageError
    from study.runs.checkpoint import read_checkpoint
    from study.runs.safe_read import read_json_object

    if checkpoint not in ("best", "last"):
        raise UsageError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    path = find_checkpoint(name_or_path, ckpt_dir,
                           prefer=BEST_FIRST if checkpoint == "best" else LAST_FIRST)
    config = dict(read_checkpoint(path).get("config") or {})
    folder = path.parent
    return Run(name=folder.name, path=folder, checkpoint=path, config=config,
               status=read_json_object(folder / RUN_JSON) or {}, _model=model)


def list_runs(*, status: str | list[str] | None = None, group: str | None = None,
              ckpt_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """What `flowctl list-runs --json` prints: one dict per run folder, newest first.
    Reads run.json files only (no torch, no user code)."""
    from study.runs.paths import checkpoint_root
    from study.runs.status import scan_runs

    wanted = {status} if isinstance(status, str) else set(status) if status else None
    return [run.masked_json() for run in scan_runs(checkpoint_root(ckpt_dir))
            if (wanted is None or run.display_status in wanted)
            and (group is None or run.group == group)]


def _number(value: str) -> float | int | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value
