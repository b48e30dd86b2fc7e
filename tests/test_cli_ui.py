"""`flowctl ui`: help, start-up messages, bad input (one line, exit 2), loopback by default."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fake_runs import write_run
from tests.support.helpers import REPO_ROOT, cli, get_json, spawn, start_ui, stop
from tests.support.import_check import APP_MAIN, run_python


def test_help_has_example_and_options():
    result = cli("ui", "--help")
    assert result.exit_code == 0
    assert "Example: flowctl ui --port 8765" in result.output
    for option in ("--ckpt-dir", "--port", "--host", "--json"):
        assert option in result.output


def test_help_imports_neither_torch_nor_wandb():
    done = run_python(APP_MAIN, "ui", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def test_serves_on_loopback_and_stops_cleanly_on_sigterm(isolated_run_root: Path):
    write_run(isolated_run_root, "one")
    server, url = start_ui()
    try:
        assert url.startswith("http://127.0.0.1:")
        assert [row["folder"] for row in get_json(f"{url}/api/runs")["runs"]] == ["one"]
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0 and err == ""  # no warning on loopback, no request log


def test_plain_start_line_names_root_and_url(isolated_run_root: Path):
    server = spawn("ui", "--port", "0")
    try:
        line = server.stdout.readline()
    finally:
        stop(server)
    assert line.startswith(f"flowctl ui: runs under {isolated_run_root} at http://127.0.0.1:")


def test_port_in_use_is_one_line_and_exit_2(isolated_run_root: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = spawn("ui", "--port", str(port))
        try:
            _, err = done.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            stop(done)
            raise
    assert done.returncode == 2
    assert err.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use (another flowctl ui?); pass --port N, "
        "or --port 0 for any free port"]


def test_bad_host_port_and_root_that_is_a_file_are_exit_2(tmp_path: Path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    for args, expected in (
        (["--port", "70000"], "--port must be between 0 and 65535, got 70000; 0 picks a free port"),
        (["--ckpt-dir", str(not_a_folder)], f"checkpoint root {not_a_folder} is not a folder"),
        (["--host", "no-such-host.invalid"], "cannot listen on host 'no-such-host.invalid'"),
    ):
        done = spawn("ui", "--port", "0", *args)
        _, err = done.communicate(timeout=60)
        assert done.returncode == 2, err
        assert len(err.strip().splitlines()) == 1 and expected in err


def test_other_host_only_when_asked_with_a_warning_line(isolated_run_root: Path):
    server = spawn("ui", "--port", "0", "--host", "0.0.0.0", "--json")
    try:
        started = json.loads(server.stdout.readline())
        assert get_json(f"http://127.0.0.1:{started['port']}/api/runs")["runs"] == []
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert started["host"] == "0.0.0.0" and started["port"] > 0
    assert err.strip().splitlines() == [
        f"warning: listening on 0.0.0.0:{started['port']}, not loopback: anyone who can reach "
        "this machine can read these runs (read-only, no login)"]
    assert server.returncode == 0


@pytest.mark.slow
def test_a_built_wheel_serves_the_page(tmp_path: Path):
    """The page ships as package data: a non-editable install has it (the hatchling wheel
    target). Built offline with the dev extras' hatchling (every install mode, with the
    network for build isolation: tests/test_install_modes.py)."""
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling: pip install -e '.[dev]'")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "study", source / "study",
                    ignore=shutil.ignore_patterns("__pycache__", "checkpoints", "splits"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True,
                   timeout=300)
    wheel = next((tmp_path / "wheel").glob("flowctl-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True, capture_output=True, timeout=300)
    shipped = sorted(path.name for path in (REPO_ROOT / "study" / "ui" / "static").iterdir())
    code = ("import study.ui.server as server; print(server.__file__); "
            "print(sorted(server.load_static()))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, timeout=60)
    assert done.returncode == 0, done.stderr
    location, names = done.stdout.splitlines()
    assert location.startswith(str(tmp_path / "site"))  # the installed copy, not the checkout
    assert ast.literal_eval(names) == shipped and "index.html" in shipped
