"""How fast `flowctl ui` answers over 1,000 run folders: /api/runs, a run's status and
metrics, and (with chromium) how long the runs page takes to draw and to redraw.

The server is a real `flowctl ui` process; requests go over one keep-alive connection, as a
polling page makes them. Each run folder looks like a real one (run.json, metrics.csv,
best.pt, last.pt, a wandb/ folder), because /api/runs walks every folder. The baseline is
study.runs.status.scan_runs over the same root, in this process: what `list-runs` pays.

Usage: python scripts/bench_ui.py [--runs 1000] [--repeats 30] [--metrics-rows 100000] [--no-browser]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
STATUSES = ("finished", "finished", "failed", "preempted", "early_stopped", "running")
HEADER = "step,epoch,stage_id,train/loss,train/grad_norm,train/lr,val/loss,val/best_loss,elapsed_s\n"


def metrics_text(rows: int) -> str:
    lines = [f"{10 * (i + 1)},{i // 9},0,{1.0 / (i + 1)!r},0.5,0.001,,,{0.01 * i:.3f}\n"
             for i in range(rows)]
    return HEADER + "".join(lines)


def write_runs(root: Path, count: int) -> None:
    """`count` run folders shaped like the trainer's (small files: the walk, not the bytes, costs)."""
    now = datetime.now(timezone.utc)
    small_metrics = metrics_text(200)
    for index in range(count):
        name = f"mlp-icfm-moons-{index:05d}"
        run_dir = root / name
        (run_dir / "wandb" / f"offline-run-{index}" / "files").mkdir(parents=True)
        updated = now - timedelta(minutes=7 * index)
        status = STATUSES[index % len(STATUSES)]
        record = {
            "run_name": name, "group": f"sweep-{index % 7}", "status": status,
            "config": {"arch": "mlp", "flow": "icfm", "dataset": "moons", "epochs": 20, "seed": index},
            "epoch": index % 21, "total_epochs": 20, "global_step": 80 * (index % 21),
            "stage": "main", "train_loss": 1.0 / (1 + index), "best_val_loss": 1.1 / (1 + index),
            "started_at": (updated - timedelta(minutes=5)).isoformat(),
            "updated_at": updated.isoformat(), "elapsed_s": 300.0, "pid": 4_000_000 + index,
            "host": "bench-node", "wandb_mode": "offline", "error": None, "checkpoints": {},
        }
        (run_dir / "run.json").write_text(json.dumps(record, indent=1))
        (run_dir / "metrics.csv").write_text(small_metrics)
        for checkpoint in ("best.pt", "last.pt"):
            (run_dir / checkpoint).write_bytes(b"\0" * 4096)
        for part in ("files/config.yaml", "files/wandb-summary.json", "run.wandb"):
            (run_dir / "wandb" / f"offline-run-{index}" / part).write_text("{}")


def start_server(root: Path) -> tuple[subprocess.Popen, str, int]:
    command = [sys.executable, "-m", "study.cli.app", "ui", "--port", "0", "--json",
               "--ckpt-dir", str(root)]
    server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    started = json.loads(server.stdout.readline())
    return server, started["url"].rstrip("/"), started["port"]


def timed_gets(port: int, path: str, repeats: int) -> tuple[list[float], int, float]:
    """(wall seconds of `repeats` GETs on one keep-alive connection after one warm-up,
    response bytes, wall seconds of the warm-up: the first answer, nothing remembered yet)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times, size, first = [], 0, 0.0
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        assert response.status == 200, (path, response.status, body[:200])
        size = len(body)
        if attempt:
            times.append(elapsed)
        else:
            first = elapsed
    connection.close()
    return times, size, first


def browser_times(url: str, runs: int, polls: int) -> dict[str, float] | None:
    """(first draw of `runs` rows, median redraw, median fetch) in ms, or None without chromium."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="bench-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(f"{url}/")
        started = time.perf_counter()
        while driver.execute_script("return document.querySelectorAll('#runs-body tr').length") < runs:
            time.sleep(0.01)
        first_ms = (time.perf_counter() - started) * 1000
        renders, fetches, seen = [], [], None
        while len(renders) < polls:
            entries = driver.execute_script(
                "return performance.getEntriesByType('measure').map(m => [m.name, m.startTime, m.duration])")
            marks = {name: (start, duration) for name, start, duration in entries}
            if "runs-render" in marks and marks["runs-render"][0] != seen:
                seen = marks["runs-render"][0]
                renders.append(marks["runs-render"][1])
                fetches.append(marks["runs-fetch"][1])
            time.sleep(0.2)
        return {"first": first_ms, "render": statistics.median(renders[1:] or renders),
                "fetch": statistics.median(fetches[1:] or fetches)}
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def summary(times: list[float]) -> tuple[float, float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))], ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="run folders (default 1000)")
    parser.add_argument("--repeats", type=int, default=30, help="timed requests per endpoint")
    parser.add_argument("--metrics-rows", type=int, default=100_000, help="rows of the long metrics.csv")
    parser.add_argument("--no-browser", action="store_true", help="skip the chromium page timings")
    args = parser.parse_args()
    from study.runs.status import scan_runs

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-ui-") as scratch:
        root = Path(scratch) / "runs"
        write_runs(root, args.runs)
        long_run = root / "mlp-icfm-moons-00000"
        (long_run / "metrics.csv").write_text(metrics_text(args.metrics_rows))
        scan = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            scan_runs(root)
            scan.append(time.perf_counter() - started)
        server, url, port = start_server(root)
        try:
            cases = {
                f"scan_runs in-process ({args.runs} runs)": (scan, None, None),
                f"GET /api/runs ({args.runs} runs)": timed_gets(port, "/api/runs", args.repeats),
                "GET /api/runs/{name}/status": timed_gets(port, f"/api/runs/{long_run.name}/status",
                                                          args.repeats),
                f"GET .../metrics ({args.metrics_rows:,} rows, all)":
                    timed_gets(port, f"/api/runs/{long_run.name}/metrics", args.repeats),
                f"GET .../metrics?since=last ({args.metrics_rows:,} rows)":
                    timed_gets(port, f"/api/runs/{long_run.name}/metrics?since={10 * args.metrics_rows - 10}",
                               args.repeats),
            }
            page = None if args.no_browser else browser_times(url, args.runs, polls=8)
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"{args.repeats} requests per row after a warm-up, one keep-alive connection\n")
    width = max(len(label) for label in cases)
    print(f"| {'what':<{width}} | first ms | median ms | p90 ms | max ms | response |")
    print(f"|{'-' * (width + 2)}|---------:|----------:|-------:|-------:|---------:|")
    for label, (times, size, first) in cases.items():
        median, p90, worst = summary(times)
        shown = "-" if size is None else f"{size / 1000:.0f} kB"
        cold = "-" if first is None else f"{first * 1000:.1f}"
        print(f"| {label:<{width}} | {cold:>8} | {median * 1000:9.1f} | {p90 * 1000:6.1f} | "
              f"{worst * 1000:6.1f} | {shown:>8} |")
    if page is None:
        print("\n(page timings skipped: no chromium/chromedriver, or --no-browser)")
    else:
        print(f"\nruns page in headless chromium, {args.runs} rows: first draw {page['first']:.0f} ms "
              f"(load, fetch, build the rows); each 2 s poll: fetch + parse {page['fetch']:.0f} ms, "
              f"redraw {page['render']:.0f} ms (median)")


if __name__ == "__main__":
    main()
