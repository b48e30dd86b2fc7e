"""The pytest fixtures for real flowctl processes started fast (a plugin: tests/conftest.py).

`flowctl` children are forked from a zygote (tests/support/zygote.py): one interpreter per
pytest worker that has imported torch, POT and the CLI once. Each child is a real process
with its own pid, process group, signals, stdio files and environment, so SIGKILL, SIGTERM
and SIGINT reach it exactly as they reach a freshly started `flowctl`, but a start costs
milliseconds instead of seconds. Used by tests/faults and by the signal tests of
test_resume, test_registry, test_mlflow and test_slurm_requeue; fresh interpreters meet the
same signals in test_resume's SIGTERM test, test_custom_network, test_sweep_e2e,
test_distributed and the real-Slurm tests (tests.support.helpers.spawn).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.zygote import Zygote


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory):
    zygote = Zygote(tmp_path_factory.mktemp("zygote-logs"))
    yield zygote
    zygote.close()


@pytest.fixture
def flowctl(zygote: Zygote, isolated_run_root: Path):
    """`flowctl(*argv, env=None, setup=None, setup_args=None)` -> a running Child.

    The child gets this test's environment (its checkpoint root), plus `env`; children still
    running when the test ends are killed.
    """
    started = []

    def start(*argv, env: dict | None = None, setup: str | None = None,
              setup_args: dict | None = None):
        child = zygote.run(*argv, env={**os.environ, **(env or {})}, setup=setup,
                           setup_args=setup_args)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.poll() is None:
            child.kill()
            child.wait(30)
