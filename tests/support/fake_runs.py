"""Run folders written by hand, as the trainer leaves them: run.json and metrics.csv only,
for the tests of list-runs and the dashboard, which read runs and never train one."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

METRICS_HEADER = "step,epoch,stage_id,train/loss,train/grad_norm,train/lr,val/loss,val/best_loss,elapsed_s\n"


def iso_ago(seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat()


def write_run(root: Path, name: str, *, age_s: float = 10.0, **fields) -> dict:
    """A run.json as the trainer writes it, last updated `age_s` seconds ago."""
    record = {
        "run_name": name, "group": "default", "status": "finished",
        "config": {"arch": "mlp", "flow": "icfm", "epochs": 20}, "epoch": 20, "total_epochs": 20,
        "global_step": 1600, "stage": "main", "train_loss": 0.5, "best_val_loss": 0.25,
        "started_at": iso_ago(age_s + 60), "updated_at": iso_ago(age_s),
        "finished_at": None, "elapsed_s": 60.0, "pid": 1, "host": "elsewhere",
        "wandb_run_id": f"id-{name}", "wandb_mode": "offline", "wandb": "ok", "error": None,
        "checkpoints": {},
    }
    record.update(fields)
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(record))
    return record


def write_metrics(run_dir: Path, rows: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.csv").write_text(METRICS_HEADER + "".join(row + "\n" for row in rows))
