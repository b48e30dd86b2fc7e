"""The README's screenshot of `flowctl ui`: a real two-stage run on moons, its plots and eval,
served by `flowctl ui` and photographed by headless chromium.

Usage: python scripts/ui_screenshot.py [--out docs/ui-run-page.png] [--live]
  --live: photograph the page while the run trains (else after it finished, with eval and plots)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN = "moons-two-stage"
STAGES = """\
epochs: 30
stages:
  - {name: warm, epochs: 10, flow: icfm}
  - {name: fine, epochs: 20, flow: otcfm, lr: 0.0005}
"""


def flowctl(*args: str, env: dict[str, str], wait: bool = True) -> subprocess.Popen:
    command = [sys.executable, "-m", "study.cli.app", *args]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    if wait and process.wait() != 0:
        raise SystemExit(f"failed: flowctl {' '.join(args)}")
    return process


def until(condition, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "ui-run-page.png")
    parser.add_argument("--live", action="store_true", help="photograph while training")
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="flowctl-shot-") as scratch:
        root = Path(scratch) / "checkpoints"
        config = Path(scratch) / "two-stage.yaml"
        config.write_text(STAGES.replace("epochs: 30", "epochs: 400") if args.live else STAGES)
        env = {**os.environ, "FLOWCTL_CKPT_DIR": str(root), "OMP_NUM_THREADS": "1"}
        train_args = ("train", "--config", str(config), "--dataset", "moons", "--batch-size", "256",
                      "--width", "64", "--depth", "3", "--patience", "0", "--run-name", RUN,
                      "--wandb-mode", "disabled", "--plain")
        trainer = flowctl(*train_args, env=env, wait=not args.live)
        if args.live:
            until(lambda: (root / RUN / "best.pt").exists())
        flowctl("plot", RUN, env=env)
        flowctl("eval", RUN, "--n", "1000", env=env)
        server = flowctl("ui", "--port", "0", "--json", env=env, wait=False)
        url = json.loads(server.stdout.readline())["url"]
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1400,1400", "--hide-scrollbars",
                     f"--user-data-dir={Path(scratch) / 'profile'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get(f"{url}runs/{RUN}")
            until(lambda: driver.execute_script(
                "return document.querySelectorAll('#pictures img').length > 0 && "
                "document.getElementById('checkpoint-table').textContent.includes('best.pt') && "
                "!!document.querySelector('#loss-chart polyline')"))
            time.sleep(1.0)  # let the pictures decode before the photograph
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
            server.terminate()
            trainer.terminate()
            trainer.wait()
    print(args.out)


if __name__ == "__main__":
    main()
