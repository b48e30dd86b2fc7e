"""`flowctl ui` in a real browser: Debian's chromium, headless, driven by selenium through
Debian's chromedriver, shows a real training run as it trains.

Needs chromium and chromedriver: skipped without them, an error in CI (.ci/run installs
both; tests/support/real_services.py). Screenshots of both pages are saved in the test's temp
folder (runs-page.png, run-page.png).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.helpers import TINY, spawn, start_ui, stop, vectors_file, wait_for

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# Headless as root, offline: no sandbox, no GPU, nothing fetched in the background.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")

pytestmark = [pytest.mark.slow, pytest.mark.real_service("browser")]

ROW_STATE = """
const row = document.querySelector(`tr[data-run="${arguments[0]}"]`);
if (!row) return null;
return {status: row.querySelector(".badge").textContent, progress: row.querySelector("progress").value,
        link: row.querySelector("a").getAttribute("href")};
"""
CHART_STATE = """
const line = document.querySelector(`#${arguments[0]} polyline[data-series="${arguments[1]}"]`);
if (!line) return null;
return {count: Number(line.dataset.count), pairs: line.getAttribute("points").trim().split(/\\s+/).length};
"""


@pytest.fixture
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Paths given: selenium's driver manager (which would download) never runs.
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


def test_pages_show_a_training_run_live(tmp_path: Path, browser, isolated_run_root: Path):
    data = vectors_file(tmp_path, rows=20000)  # 281 steps per epoch: minutes if not stopped
    config = tmp_path / "stages.yaml"  # a stage boundary after 2 epochs, drawn on the curves
    config.write_text("stages:\n  - {name: warm, epochs: 2}\n  - {name: main, epochs: 1, lr: 0.0005}\n")
    trainer = spawn("train", "--config", config, "--dataset", data, "--epochs", "300",
                    "--patience", "1000", "--run-name", "browser-live", *TINY)
    server, url = start_ui()
    try:
        browser.get(f"{url}/")

        def row() -> dict:
            return browser.execute_script(ROW_STATE, "browser-live") or {}

        wait_for(lambda: row().get("status") == "running" and row()["progress"] > 0, timeout=120,
                 process=trainer, interval=0.1, what="the running run's row with progress")
        first = row()["progress"]
        wait_for(lambda: row()["progress"] > first, timeout=120, process=trainer, interval=0.1,
                 what="the progress bar to advance")
        assert row()["link"] == "/runs/browser-live"
        browser.save_screenshot(str(tmp_path / "runs-page.png"))

        browser.get(f"{url}/runs/browser-live")

        def chart(svg: str, series: str) -> dict:
            return browser.execute_script(CHART_STATE, svg, series) or {"count": 0, "pairs": 0}

        wait_for(lambda: chart("loss-chart", "train")["count"] >= 2, timeout=120, process=trainer,
                 interval=0.1, what="a train loss curve")
        points = chart("loss-chart", "train")["count"]
        wait_for(lambda: chart("loss-chart", "train")["count"] > points, timeout=120,
                 process=trainer, interval=0.1, what="the loss curve to grow")
        assert chart("loss-chart", "train")["pairs"] >= 2
        assert chart("lr-chart", "lr")["count"] >= 2
        wait_for(lambda: browser.execute_script(
            "return [...document.querySelectorAll('#loss-chart .marker-label')].map(m => m.textContent)"
        ) == ["main"], timeout=120, process=trainer, interval=0.1, what="the stage boundary")
        wait_for(lambda: chart("loss-chart", "val")["count"] >= 1, timeout=120, process=trainer,
                 interval=0.1, what="a validation point")

        def text(element_id: str) -> str:
            return browser.execute_script(f"return document.getElementById('{element_id}').textContent")

        assert text("run-status") == "running"
        assert text("run-epoch").startswith("epoch ") and text("run-epoch").endswith("/300")
        assert text("resume-command") == \
            f"flowctl resume browser-live --ckpt-dir {isolated_run_root.resolve()}"
        wait_for(lambda: "best.pt" in text("checkpoint-table"), timeout=120, interval=0.1,
                 what="the checkpoint summary")
        browser.save_screenshot(str(tmp_path / "run-page.png"))

        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(entry => entry.name)")
        assert loaded and all(name.startswith(url) for name in loaded), loaded
        problems = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not problems, problems
    finally:
        stop(trainer)
        assert stop(server) == 0
    for name in ("runs-page.png", "run-page.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
