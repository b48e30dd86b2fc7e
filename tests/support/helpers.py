"""Test helpers: tiny datasets, the CLI in-process and as a real subprocess, wandb records."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from study.cli.app import app
from study.runs.wandb_records import history as wandb_history  # noqa: F401
from study.runs.wandb_records import read_records as wandb_records  # noqa: F401
from study.runs.wandb_records import run_files

REPO_ROOT = Path(__file__).resolve().parents[2]
# Small and fast: 640 rows at batch 64 -> 9 training steps per epoch after the val split.
TINY = ["--batch-size", "64", "--width", "16", "--depth", "2", "--warmup-steps", "5",
        "--checkpoint-interval", "0", "--wandb-mode", "disabled", "--plain"]


def run_flags(data, *extra: str, epochs: int = 30) -> list[str]:
    """`flowctl train` flags for a tiny run on `data` that never stops early."""
    return ["--dataset", str(data), "--epochs", str(epochs), "--patience", "0", *TINY, *extra]


def error_line(output, *fragments: str, exit_code: int | None = 2) -> str:
    """The one `error: ` line of a failed command, holding every fragment.

    `output`: a CliRunner result, a finished Popen's stderr text, or any string. Asserts no
    traceback, exactly one error line, and every other stderr line a flowctl note or
    warning; with a result, also its exit code (None: any).
    """
    stderr = output if isinstance(output, str) else output.stderr
    if exit_code is not None and not isinstance(output, str):
        assert output.exit_code == exit_code, output.stdout + output.stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    others = [line for line in stderr.splitlines() if line and not line.startswith("error: ")]
    assert all(line.startswith(("flowctl: ", "warning: ", "note: ")) for line in others), stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def stand_in(tmp_path: Path, name: str, body: str) -> Path:
    """An executable `name` in tmp_path/bin that appends its arguments to tmp_path/NAME.args
    and runs the shell `body`; returns the folder, to put on PATH."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    tool = folder / name
    tool.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / (name + '.args')}\n{body}\n")
    tool.chmod(0o755)
    return folder


def vectors_file(folder: Path, rows: int = 640, dim: int = 2, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    path = folder / f"vectors-{rows}x{dim}.pt"
    torch.save(torch.randn(rows, dim, generator=generator) * 2 + 1, path)
    return path


def cli(*args: str):
    """Run flowctl in-process; returns the CliRunner result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start `flowctl ...` as a real child process (its own interpreter and signals)."""
    # A fresh process, as from a shell: not attached to this test worker's wandb service
    # (wandb shares its service with children through $WANDB_SERVICE).
    child_env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.Popen(
        [sys.executable, "-m", "study.cli.app", *map(str, args)], cwd=REPO_ROOT,
        env={**child_env, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def wait_for(condition, *, timeout: float = 60.0, process: subprocess.Popen | None = None,
             what: str = "condition", interval: float = 0.002) -> None:
    """Poll `condition()` every `interval` s until true; fail early if `process` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"process exited ({process.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def serve_root(root: Path):
    """A `flowctl ui` server (DashboardServer) over `root` on a free loopback port, served
    from a thread of this process; yields its base URL (no trailing slash)."""

    from study.ui.api import DashboardApi
    from study.ui.server import DashboardServer

    server = DashboardServer(DashboardApi(root), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()


def start_ui(*args: str, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start `flowctl ui --port 0 --json ARGS` as a real server; returns (process, base URL).

    The base URL has no trailing slash: f"{url}/api/runs".
    """
    import selectors

    process = spawn("ui", "--port", "0", "--json", *args)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    ready = selector.select(timeout)
    selector.close()
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"flowctl ui did not start (exit {process.returncode}): {err[-2000:]}")
    return process, json.loads(line)["url"].rstrip("/")


def stop(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM `process` (if still running) and wait for it; returns its exit code."""
    if process.poll() is None:
        process.terminate()
    try:
        process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
    return process.returncode


def http_get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request, without following redirects or raising on 4xx/5xx.

    `url` is sent as written (no normalisation of `..` or `%2F`), to probe the server itself.
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def get_json(url: str, status: int = 200):
    """The JSON body of GET `url`, asserting the status code; strict JSON (no NaN/Infinity)."""
    code, _, body = http_get(url)
    assert code == status, f"expected {status} from {url}, got {code}: {body[:300]!r}"

    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant} from {url}")

    return json.loads(body, parse_constant=refuse)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointSteps:
    """`steps(path)`: the global_step of the checkpoint at `path`, None while there is none.
    A run replaces last.pt atomically, so each new file (inode, mtime) is read once: a test
    polling it every few ms does not torch.load the same file on every poll."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], int] = {}

    def __call__(self, path: Path) -> int | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_ino, stat.st_mtime_ns)
        if key not in self.seen:
            self.seen[key] = load(path)["global_step"]
        return self.seen[key]


def state_differences(reference: dict, resumed: dict) -> list[str]:
    """Where two checkpoints' step, weights, EMA or optimizer state differ (bitwise)."""
    if reference.get("global_step") != resumed.get("global_step"):
        return [f"global_step {reference.get('global_step')} vs {resumed.get('global_step')}"]
    differences = []
    for key in ("model_state_dict", "ema_shadow"):
        for name, tensor in reference[key].items():
            if not torch.equal(tensor, resumed[key][name]):
                differences.append(f"{key}[{name}]")
    opt_a, opt_b = reference["optimizer_state_dict"], resumed["optimizer_state_dict"]
    if opt_a["param_groups"] != opt_b["param_groups"]:
        differences.append("optimizer param_groups")
    for index, state in opt_a["state"].items():
        for name, tensor in state.items():
            if not torch.equal(tensor, opt_b["state"][index][name]):
                differences.append(f"optimizer state {index}.{name}")
    return differences


def assert_same_state(a: dict, b: dict) -> None:
    """Bitwise equality of step, model, EMA and optimizer state between two checkpoints."""
    differences = state_differences(a, b)
    assert not differences, f"checkpoints differ: {'; '.join(differences[:10])}"


def metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.csv rows without wall-clock columns."""
    import csv

    from study.runs.metrics_log import WALL_CLOCK_COLUMNS

    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK_COLUMNS}
                for row in csv.DictReader(handle)]


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


class LinearVelocity(nn.Module):
    """A study-style custom velocity network v(x, t) = W [x, t] + b for 2-D data.

    `fault(call, out)` runs on every training-mode forward (call counts from 1) and may
    return a replacement output or raise, to inject a failure at a known step.
    """

    def __init__(self, fault=None):
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.fault = fault
        self.calls = 0

    def forward(self, x, t):
        out = self.net(torch.cat([x, t[:, None]], dim=1))
        if self.training and self.fault is not None:
            self.calls += 1
            out = self.fault(self.calls, out)
        return out


class CreatesMarker:
    """Unpickling this runs open(marker, "w"): a stand-in for arbitrary code in a pickle.

    Tests save it (torch.save or pickle.dumps) and assert that no loader ever creates `marker`.
    """

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def wandb_files(run_dir: Path, run_id: str | None = None) -> list[Path]:
    """The run's offline wandb files, oldest segment first, once the newest one is complete.

    wandb's service process writes the file on its own: `run.finish()` can return before
    the last records (tags, notes, exit) are on disk, which a test reading at once saw once
    under load. So this waits for the newest segment's exit record (an older segment either
    finished before it or was killed and never will)."""
    files = run_files(run_dir, run_id)
    if files:
        wait_for(lambda: any(r.WhichOneof("record_type") == "exit" for r in wandb_records(files[-1])),
                 timeout=60, what=f"wandb's exit record in {files[-1].name}", interval=0.01)
    return files
