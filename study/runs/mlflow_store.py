"""Where a run's MLflow data lives and the small client calls around it. No mlflow import at
module level: `mlflow` is imported only when a run (or `flowctl eval`) actually uses it.

The store: $MLFLOW_TRACKING_URI when set (a server, a database); otherwise a SQLite store in
the run folder, `{run}/mlruns/mlflow.db`, with artifacts in `{run}/mlruns/artifacts`. SQLite
rather than MLflow's `./mlruns` file store: MLflow 3.x refuses the file store unless
MLFLOW_ALLOW_FILE_STORE is set (it is in maintenance mode), while SQLite needs no server and
works the same with MLflow 2.x and 3.x (mlflow-skinny plus SQLAlchemy and Alembic).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.runs.metrics_log import METRIC_COLUMNS, NOT_REPLAYED

LOCAL_STORE = "mlruns"
LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "artifacts"
URI_ENV = "MLFLOW_TRACKING_URI"
INSTALL_HINT = "pip install mlflow-skinny sqlalchemy alembic (or pip install -e '.[mlflow]')"
# Keys only the trainer's history rows hold (every row has `epoch`): the last step of a
# resumed run is read from these alone, never from eval/* (`flowctl eval` adds those at the
# run's step of the moment, which may be ahead of what the trainer had stored) or summaries.
HISTORY_KEYS = (*(c for c in METRIC_COLUMNS if c not in NOT_REPLAYED and not c.startswith("eval/")),
                "epoch", "metrics/stage_id")
# MLflow caps a param value at 6,000 characters (2.x; 8,000 in 3.x) and a batch at 100 params.
MAX_PARAM_CHARS = 6000
MAX_PARAMS_PER_BATCH = 100


def local_uri(run_dir: Path) -> str:
    """The SQLite store inside the run folder, as an absolute `sqlite:///` URI."""
    return "sqlite:///" + str((Path(run_dir) / LOCAL_STORE / LOCAL_DB).resolve())


def tracking_uri(run_dir: Path, recorded: str | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else the URI a run recorded in run.json, else the run's own store."""
    return os.environ.get(URI_ENV) or recorded or local_uri(run_dir)


def check_mlflow_available(uri: str | None = None) -> None:
    """UsageError (one line, with the pip command) when mlflow, or for a database store
    (the local SQLite one included) SQLAlchemy and Alembic, are missing. Looks the packages
    up without importing them."""
    uri = uri if uri is not None else os.environ.get(URI_ENV, "sqlite:")
    server = uri.startswith(("http://", "https://", "databricks"))
    needed = ["mlflow"] + ([] if server else ["sqlalchemy", "alembic"])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"MLflow tracking needs {' and '.join(missing)}: {INSTALL_HINT}; "
                         "or choose other trackers with --tracker")


def open_client(uri: str):
    """An MlflowClient on `uri`; the local store's folder is created first. MLflow's INFO
    chatter (table creation, migrations) is silenced unless $MLFLOW_LOGGING_LEVEL asks for it."""
    from mlflow.tracking import MlflowClient

    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created (or restored from the trash) if needed."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # created by another run in the meantime
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def find_run(client, run_id: str):
    """The MLflow run `run_id`, or None if the store has no such (or only a deleted) run."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return None if run.info.lifecycle_stage == "deleted" else run


def last_history_step(client, run) -> int:
    """The highest step of the trainer's history keys stored in `run` (-1: none)."""
    last = -1
    for key in HISTORY_KEYS:
        if key in run.data.metrics:
            steps = [metric.step for metric in client.get_metric_history(run.info.run_id, key)]
            last = max([last, *steps])
    return last


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """MLflow params from a (masked) config: nested dicts as `a.b`, lists as JSON text."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        params[name] = text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 1] + "…"
    return params


def param_batches(params: dict[str, str]) -> list[list]:
    """`params` as lists of mlflow Param entities, at most MAX_PARAMS_PER_BATCH each."""
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in params.items()]
    return [items[i:i + MAX_PARAMS_PER_BATCH] for i in range(0, len(items), MAX_PARAMS_PER_BATCH)]
