"""The JSON views of `flowctl ui`, built on study.runs. No torch import.

Every view returns a Reply; none raises for a bad run folder. A run.json that is missing,
half-written or corrupt reads as status `unknown` with its reason (study.runs.status), a
name that does not resolve under the root (study.ui.resolve) is a 404, and nothing here
writes to disk.

    GET /api/runs                     {root, now, statuses, runs: [row...], hidden: [...]}
    GET /api/runs/{name}              {root, run: row, run_json, eval, pictures, resume_command,
                                                   checkpoint}
    GET /api/runs/{name}/metrics?since=STEP   {columns, since, last_step, rows: [...]}
    GET /api/runs/{name}/status       {running, current_epoch, total_epochs, loss, status, global_step}
    GET /api/runs/{name}/files/{png}  the picture
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.runs.display import eta_seconds as estimate_eta
from study.runs.paths import (
    DEFAULT_CKPT_ROOT,
    EVAL_JSON,
    METRICS_CSV,
    RUN_JSON,
)
from study.runs.safe_read import load_json_object
from study.runs.status import DISPLAY_STATUSES, RunInfo, parse_time, read_run, scan_runs
from study.ui.checkpoint_view import CheckpointSummaries
from study.ui.metrics_feed import MetricsFeed
from study.ui.resolve import file_in_run, links_outside, plain_name, run_folder
from study.ui.run_cache import RunInfoCache

PICTURE_SUFFIX = ".png"


@dataclass
class Reply:
    """An HTTP answer: a status code and a JSON-able body (or bytes with their content type)."""

    status: int
    body: Any
    content_type: str = "application/json"


def not_found(what: str) -> Reply:
    return Reply(404, {"error": what})


class DashboardApi:
    """The views over one checkpoint root. Safe to call from many threads at once."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.metrics_feed = MetricsFeed()
        self.run_cache = RunInfoCache()
        self.summaries = CheckpointSummaries()
        default = os.path.realpath(DEFAULT_CKPT_ROOT) == os.path.realpath(self.root)
        self.resume_suffix = "" if default else f" --ckpt-dir {shlex.quote(str(self.root.resolve()))}"

    def runs(self, query: dict[str, list[str]]) -> Reply:
        """The table: every run folder newest first, optionally `?status=a,b&group=g`."""
        wanted = _split(query.get("status"))
        unknown = sorted(wanted - set(DISPLAY_STATUSES))
        if unknown:
            return Reply(400, {"error": f"unknown status {unknown[0]!r}; choose from: "
                                        f"{', '.join(DISPLAY_STATUSES)}"})
        groups = _split(query.get("group"))
        now = time.time()
        root_real = os.path.realpath(self.root)
        rows, hidden = [], []
        infos = scan_runs(self.root, now=now, reader=self.run_cache)
        self.run_cache.forget_unseen()
        for info in infos:
            if links_outside(root_real, str(info.path)):
                hidden.append({"folder": os.path.basename(info.path),
                               "reason": "a symlink to a folder outside the checkpoint root"})
            elif (not wanted or info.display_status in wanted) and (not groups or info.group in groups):
                rows.append(table_row(info, now))
        return Reply(200, {"root": str(self.root), "now": now, "statuses": list(DISPLAY_STATUSES),
                           "runs": rows, "hidden": hidden})

    def run(self, name: str, query: dict[str, list[str]]) -> Reply:
        """One run: its table row, run.json as written, eval.json, pictures, resume command,
        and (unless `?checkpoint=0`) the checkpoint summary (read without torch)."""
        folder = run_folder(self.root, name)
        if folder is None:
            return not_found(f"no run named {name!r} under {self.root}")
        now = time.time()
        info = read_run(folder, now=now)
        run_json, _ = read_json(folder, RUN_JSON)
        eval_json, eval_problem = read_json(folder, EVAL_JSON)
        body = {
            "root": str(self.root),
            "run": table_row(info, now, folder=name),
            "run_json": run_json,
            "eval": eval_json,
            "eval_problem": eval_problem,
            "pictures": pictures(folder, name),
            "resume_command": f"flowctl resume {shlex.quote(name)}{self.resume_suffix}",
        }
        if _first(query.get("checkpoint"), "1") != "0":
            body["checkpoint"] = self.summaries.summary(folder)
        return Reply(200, json_safe(body))

    def status(self, name: str) -> Reply:
        """The directive's training status: {running, current_epoch, total_epochs, loss}."""
        folder = run_folder(self.root, name)
        if folder is None:
            return not_found(f"no run named {name!r} under {self.root}")
        info = read_run(folder)
        return Reply(200, json_safe({
            "running": info.display_status == "running", "current_epoch": info.epoch,
            "total_epochs": info.total_epochs, "loss": info.train_loss,
            "status": info.display_status, "global_step": info.global_step,
        }))

    def metrics(self, name: str, query: dict[str, list[str]]) -> Reply:
        """metrics.csv rows with step > `since` (default -1: all rows)."""
        folder = run_folder(self.root, name)
        if folder is None:
            return not_found(f"no run named {name!r} under {self.root}")
        raw_since = _first(query.get("since"), "-1")
        try:
            since = int(raw_since)
        except ValueError:
            return Reply(400, {"error": f"since must be an integer step, got {raw_since!r}"})
        path = file_in_run(folder, METRICS_CSV)
        columns, rows, last_step = ([], [], -1) if path is None else \
            self.metrics_feed.rows_after(path, since)
        head = json.dumps({"columns": columns, "since": since, "last_step": last_step})
        return Reply(200, b"".join([head[:-1].encode(), b',"rows":[', b",".join(rows), b"]}"]))

    def picture(self, name: str, filename: str) -> Reply:
        """A PNG from the run folder (loss.png, samples.png, marginals.png, ...)."""
        folder = run_folder(self.root, name)
        path = None if folder is None or not filename.endswith(PICTURE_SUFFIX) else \
            file_in_run(folder, filename)
        if path is None:
            return not_found(f"no picture {filename!r} in run {name!r}")
        try:
            with open(path, "rb") as handle:
                return Reply(200, handle.read(), "image/png")
        except OSError:
            return not_found(f"picture {filename!r} vanished")


def table_row(info: RunInfo, now: float, folder: str | None = None) -> dict[str, Any]:
    """RunInfo.to_json() plus what the table draws: running, progress (0..1), eta_s, age_s,
    and `folder`, the name in URLs (run.json's run_name may differ: a renamed folder)."""
    row = info.to_json()
    row["folder"] = folder or os.path.basename(info.path)
    updated = parse_time(info.updated_at)
    age_s = now - (updated if updated is not None else info.sort_time) if info.sort_time else None
    progress = None
    if info.epoch is not None and info.total_epochs:
        progress = min(1.0, max(0.0, info.epoch / info.total_epochs))
    row.update(running=info.display_status == "running", progress=progress,
               eta_s=eta_seconds(info, age_s), age_s=age_s)
    return row


def eta_seconds(info: RunInfo, age_s: float | None) -> float | None:
    """Time left for a running run (study.runs.display.eta_seconds: run.json's `epoch` counts
    completed epochs); None if it is not running or no epoch is complete yet."""
    if info.display_status != "running":
        return None
    return estimate_eta(epochs_done=info.epoch, total_epochs=info.total_epochs,
                        elapsed_s=info.elapsed_s, age_s=age_s or 0.0)


def read_json(folder: str, filename: str) -> tuple[Any, str | None]:
    """(parsed JSON object, None), or (None, why not) for a missing or corrupt file."""
    path = file_in_run(folder, filename)
    if path is None:
        return None, f"no {filename}"
    value, problem = load_json_object(path)
    return value, problem or None


def pictures(folder: str, name: str) -> list[dict[str, Any]]:
    """The run folder's PNGs, by name, each with its URL and mtime (to reload a new version)."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(PICTURE_SUFFIX) and plain_name(entry.name) \
                        and file_in_run(folder, entry.name):
                    mtime = entry.stat().st_mtime
                    found.append({"name": entry.name, "mtime": mtime,
                                  "url": f"/api/runs/{_quote(name)}/files/{_quote(entry.name)}"})
    except OSError:
        return []
    return sorted(found, key=lambda picture: picture["name"])


def json_safe(value: Any) -> Any:
    """A copy with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _first(values: list[str] | None, default: str) -> str:
    return values[0] if values else default


def _split(values: list[str] | None) -> set[str]:
    return {part.strip() for value in values or [] for part in value.split(",") if part.strip()}
