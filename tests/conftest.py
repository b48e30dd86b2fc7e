"""Shared fixtures: every test gets its own checkpoint root and offline wandb folder; tests
that need a real service (browser, Slurm) follow tests/support/real_services.py; tests that
only read a finished run take `trained_run` (tests/support/trained_run.py)."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path

# Tests run two pytest workers on two cores: one intra-op thread each avoids
# oversubscription (set before anything imports torch; subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# `@pytest.mark.real_service(...)`: skipped where the service is missing, an error in CI;
# `trained_run`: one finished tiny run per test session, for the tests that only read a run;
# `zygote`, `flowctl`: real flowctl processes forked from a pre-imported interpreter.
pytest_plugins = ["tests.support.real_services", "tests.support.trained_run",
                  "tests.support.zygote_fixtures"]


@pytest.fixture(autouse=True)
def isolated_run_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the checkpoint root at tmp_path; wandb never online, never prompting."""
    root = tmp_path / "checkpoints"
    monkeypatch.setenv("FLOWCTL_CKPT_DIR", str(root))
    monkeypatch.delenv("WANDB_MODE", raising=False)  # each test picks its mode by flag
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("FLOWCTL_CACHE_DIR", str(tmp_path / "flowctl-cache"))  # sha256 cache
    return root


# -- a pytest-xdist worker ends as soon as its reports are sent -----------------------------
# Registered here, before any test imports torch, wandb or MLflow, so that it runs after their
# exit handlers (atexit is last in, first out). What it skips is the interpreter's teardown of
# those modules: ~3 s per worker at the end of every run, measured in docs/development.md.
_worker_session = {"finished": False}


def pytest_sessionfinish(session):
    _worker_session["finished"] = True


def _end_worker_without_teardown() -> None:
    if not _worker_session["finished"]:
        return  # a worker that did not finish its session ends the usual way
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


if os.environ.get("PYTEST_XDIST_WORKER"):
    atexit.register(_end_worker_without_teardown)
