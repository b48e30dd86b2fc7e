"""The real-service policy (tests/support/real_services.py), run as `make test` runs it: a real
pytest in a subprocess, over two workers, on a small generated test file whose tests use
the `real_service` marker. "Chromium installed, chromedriver not, no Slurm" is a PATH
holding only a stand-in `chromium`; a present service is stand-ins for all its tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helpers import REPO_ROOT, stand_in
from tests.support.real_services import browser_missing, slurm_missing

pytest_plugins = ["pytester"]

SLURM_ENABLE = "apt-get install slurm-wlm munge && .ci/start_slurm.sh (as root)"
BROWSER_SKIP = ("needs Chromium + chromedriver: chromedriver is not on PATH (chromium is); "
                "to run it: apt-get install chromium chromium-driver")
SLURM_SKIP = f"needs a running one-node Slurm: sbatch is not on PATH (no Slurm here); to run it: {SLURM_ENABLE}"


@pytest.fixture
def suite(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A generated suite: a browser test (with a fixture that leaves a file when it is set
    up), a Slurm test and a plain one; returns `run(*tools, require=None)`: pytest -n 2 over
    it with only stand-ins for `tools` on PATH, FLOWCTL_REQUIRE_SERVICES set to `require`."""
    fixture_ran = tmp_path / "browser-fixture-ran"
    pytester.makeconftest('pytest_plugins = ["tests.support.real_services"]')
    pytester.makepyfile(test_policy=f"""
        from pathlib import Path

        import pytest

        @pytest.fixture
        def browser():
            Path({str(fixture_ran)!r}).touch()

        @pytest.mark.real_service("browser")
        def test_drives_a_browser(browser):
            pass

        @pytest.mark.real_service("slurm")
        def test_submits_to_slurm():
            pass

        def test_needs_nothing():
            pass
    """)
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # tests.support.real_services, as in the checkout

    def run(*tools: str, require: str | None = None) -> pytest.RunResult:
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        for tool in tools:
            stand_in(tmp_path, tool, "echo 'Slurmctld(primary) at node is UP'")
        monkeypatch.setenv("PATH", str(folder))
        if require is None:
            monkeypatch.delenv("FLOWCTL_REQUIRE_SERVICES", raising=False)
        else:
            monkeypatch.setenv("FLOWCTL_REQUIRE_SERVICES", require)
        return pytester.runpytest_subprocess("-n", "2", "-ra")

    run.fixture_ran = fixture_ran
    return run


@pytest.mark.slow  # a nested `pytest -n 2` in a subprocess: ~2 s
def test_a_missing_service_is_a_skip_named_at_the_end_with_its_command(suite):
    result = suite("chromium")
    assert result.ret == 0
    result.assert_outcomes(passed=1, skipped=2)
    assert not suite.fixture_ran.exists()  # skipped before the test's fixtures are set up
    lines = result.stdout.lines
    section = next(i for i, line in enumerate(lines) if "real-service tests skipped: 2" in line)
    assert lines[section + 1:section + 6] == [
        BROWSER_SKIP, "    test_policy.py::test_drives_a_browser",
        SLURM_SKIP, "    test_policy.py::test_submits_to_slurm",
        "(FLOWCTL_REQUIRE_SERVICES=1, as .ci/run sets it, makes each an error)"]
    assert f"SKIPPED [1] test_policy.py:9: {BROWSER_SKIP}" in lines  # -ra: the test's line
    # The last thing before pytest's counts: after -ra's short summary.
    assert any("short test summary info" in line for line in lines[:section])
    assert "1 passed, 2 skipped" in lines[section + 6]


@pytest.mark.slow  # a nested `pytest -n 2` in a subprocess: ~2 s
def test_with_services_required_a_missing_service_is_an_error(suite):
    result = suite("chromium", require="1")
    assert result.ret == 1
    result.assert_outcomes(passed=1, errors=2)
    assert not suite.fixture_ran.exists()
    required = " (FLOWCTL_REQUIRE_SERVICES=1: a missing service is an error)"
    result.stdout.fnmatch_lines(["*ERROR at setup of test_drives_a_browser*"])
    result.stdout.fnmatch_lines(["*ERROR at setup of test_submits_to_slurm*"])
    assert {BROWSER_SKIP + required, SLURM_SKIP + required} <= set(result.stdout.lines)
    result.stdout.no_fnmatch_line("*real-service tests skipped*")


@pytest.mark.slow  # a nested `pytest -n 2` in a subprocess: ~2 s
@pytest.mark.parametrize("require", [None, "0", "1"])
def test_a_present_service_runs_its_tests(suite, require):
    result = suite("chromium", "chromedriver", "sbatch", "scontrol", require=require)
    assert result.ret == 0
    result.assert_outcomes(passed=3)
    assert suite.fixture_ran.exists()
    result.stdout.no_fnmatch_line("*real-service tests skipped*")


@pytest.mark.slow  # a nested `pytest -n 2` in a subprocess: ~2 s
def test_a_bad_require_value_or_service_name_is_one_line(pytester: pytest.Pytester, monkeypatch):
    pytester.makeconftest('pytest_plugins = ["tests.support.real_services"]')
    pytester.makepyfile(test_gpu="""
        import pytest

        @pytest.mark.real_service("gpu")
        def test_on_a_gpu():
            pass
    """)
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("FLOWCTL_REQUIRE_SERVICES", "yes")
    refused = pytester.runpytest_subprocess()
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert refused.stderr.str().strip() == "ERROR: FLOWCTL_REQUIRE_SERVICES must be 0 or 1, got 'yes'"

    monkeypatch.setenv("FLOWCTL_REQUIRE_SERVICES", "0")
    unknown = pytester.runpytest_subprocess("-ra")
    unknown.assert_outcomes(errors=1)
    unknown.stdout.fnmatch_lines(["*ERROR at setup of test_on_a_gpu*"])
    assert ("@pytest.mark.real_service takes one service name of ['browser', 'slurm'], "
            "got ('gpu',)") in unknown.stdout.lines


def test_the_checks_say_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert browser_missing() == "chromium and chromedriver not on PATH"
    assert slurm_missing() == "sbatch is not on PATH (no Slurm here)"
    monkeypatch.setenv("PATH", str(stand_in(tmp_path, "chromedriver", "")))
    assert browser_missing() == "chromium not on PATH"
    stand_in(tmp_path, "sbatch", "")
    stand_in(tmp_path, "scontrol", "echo 'Slurmctld(primary) at node is DOWN'; exit 1")
    assert slurm_missing() == "slurmctld is not up (Slurmctld(primary) at node is DOWN)"
    stand_in(tmp_path, "scontrol", "echo 'slurm_load_ctl_conf error' >&2; exit 1")
    assert slurm_missing() == "slurmctld is not up (slurm_load_ctl_conf error)"
