"""Tests that need an optional real service (a browser, a running Slurm): one policy, here.

Mark such a test `@pytest.mark.real_service("browser")` (a name from SERVICES). Before its
fixtures are set up, the service is checked:

- present: the test runs;
- missing, on a developer's machine: the test is skipped with one line saying what is
  missing and the command that provides it, and the end of the run lists every such skip;
- missing with FLOWCTL_REQUIRE_SERVICES=1 (`.ci/run` sets it): the test errors with that
  line, so CI cannot pass without having run it.

A later service is one more entry in SERVICES: a name, what it is, the command that enables
it and a check that returns why it cannot run here (None when it can). Loaded as a plugin
by tests/conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest

REQUIRE_VARIABLE = "FLOWCTL_REQUIRE_SERVICES"
MARKER = "real_service"
# How a skip by this policy is tagged on its report (user_properties survive pytest-xdist).
SKIP_PROPERTY = "real_service_skipped"


@dataclass(frozen=True)
class RealService:
    """`what` the tests need, the shell command that `enable`s it, and `missing()`: why it
    cannot run on this machine now (one short clause), or None when it can."""

    what: str
    enable: str
    missing: Callable[[], str | None]


def browser_missing() -> str | None:
    """Chromium and its driver, both looked up on PATH (as tests/test_ui_browser.py does)."""
    absent = [tool for tool in ("chromium", "chromedriver") if shutil.which(tool) is None]
    if absent == ["chromedriver"]:
        return "chromedriver is not on PATH (chromium is)"
    if absent:
        return f"{' and '.join(absent)} not on PATH"
    return None


def slurm_missing() -> str | None:
    """A Slurm that answers: `sbatch` on PATH and `scontrol ping` saying the controller is UP."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (no Slurm here)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`scontrol ping` failed: {error}"
    if "UP" not in ping.stdout:
        answer = ping.stdout.strip() or ping.stderr.strip() or f"exit {ping.returncode}"
        return f"slurmctld is not up ({' '.join(answer.split())})"
    return None


SERVICES: dict[str, RealService] = {
    "browser": RealService("Chromium + chromedriver",
                           "apt-get install chromium chromium-driver", browser_missing),
    "slurm": RealService("a running one-node Slurm",
                         "apt-get install slurm-wlm munge && .ci/start_slurm.sh (as root)",
                         slurm_missing),
}


REQUIRED_KEY = pytest.StashKey[bool]()  # FLOWCTL_REQUIRE_SERVICES, read once per run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(name): needs an optional real service ({', '.join(SERVICES)}); "
                   f"skipped where it is missing, an error with {REQUIRE_VARIABLE}=1")
    value = os.environ.get(REQUIRE_VARIABLE, "")
    if value not in ("", "0", "1"):
        raise pytest.UsageError(f"{REQUIRE_VARIABLE} must be 0 or 1, got {value!r}")
    config.stash[REQUIRED_KEY] = value == "1"


# A wrapper runs before every plain hook: the skip mark it adds is seen by pytest's own
# skipping (which reports the test's location, not this file's), before any fixture is set up.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    for marker in list(item.iter_markers(MARKER)):
        if len(marker.args) != 1 or marker.args[0] not in SERVICES:
            pytest.fail(f"@pytest.mark.{MARKER} takes one service name of {sorted(SERVICES)}, "
                        f"got {marker.args!r}", pytrace=False)
        service = SERVICES[marker.args[0]]
        why = service.missing()
        if why is None:
            continue
        reason = f"needs {service.what}: {why}; to run it: {service.enable}"
        if item.config.stash[REQUIRED_KEY]:
            pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1: a missing service is an error)",
                        pytrace=False)
        item.user_properties.append((SKIP_PROPERTY, reason))
        item.add_marker(pytest.mark.skip(reason=reason))
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: written after the short summary
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config):
    result = yield
    skipped: dict[str, list[str]] = {}  # reason -> test ids
    for report in terminalreporter.stats.get("skipped", []):
        for name, reason in report.user_properties:
            if name == SKIP_PROPERTY:
                skipped.setdefault(reason, []).append(report.nodeid)
    if skipped:
        count = sum(len(tests) for tests in skipped.values())
        terminalreporter.section(f"real-service tests skipped: {count}", sep="-")
        for reason, tests in sorted(skipped.items()):
            terminalreporter.line(reason)
            for test in sorted(tests):
                terminalreporter.line(f"    {test}")
        terminalreporter.line(f"({REQUIRE_VARIABLE}=1, as .ci/run sets it, makes each an error)")
    return result
