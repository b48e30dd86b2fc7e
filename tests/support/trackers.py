"""Reading back what a run sent to MLflow: its run, and one metric's history."""

from __future__ import annotations

from study.runs.mlflow_store import local_uri
from tests.support.helpers import run_json


def mlflow_run(run_dir):
    """(client, run) of the MLflow run that run.json names, in the store it names."""
    from mlflow.tracking import MlflowClient

    status = run_json(run_dir)
    client = MlflowClient(tracking_uri=status.get("mlflow_tracking_uri") or local_uri(run_dir))
    return client, client.get_run(status["mlflow_run_id"])


def history(client, run, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in the order MLflow stored them (timestamp, then step)."""
    metrics = client.get_metric_history(run.info.run_id, key)
    return [(m.step, m.value) for m in sorted(metrics, key=lambda m: (m.timestamp, m.step))]
