"""flowctl works however a user installs it, from any working folder.

For each install a user types -- `pip install -e .`, `pip install .`, `make install` and
`uv pip install -e .` -- a fresh venv in a temp folder (torch from the same CPU wheel as this
interpreter's, nothing beyond the package index), a copy of this checkout's working tree as the
source, and an experiment folder outside it that already holds `study/checkpoints/` and
`study/datasets/` (a `study/` without `__init__.py`: Python would import it as a namespace
package where the install lets it). From there, with no PYTHONPATH, each install must run the
study's `python -m study.flow_matching.train` twice, a one-point `flowctl sweep`,
`flowctl train --nproc 2` (torchrun workers are `python -m` children) and `flowctl ui`.

Minutes each (the venvs): marked `install`, run by `make test-install` and CI, not `make test`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import study
from tests.support.helpers import REPO_ROOT, http_get

pytestmark = [pytest.mark.slow, pytest.mark.install]

TORCH = f"torch=={metadata.version('torch')}"  # the CPU wheel this interpreter runs
TIMEOUT_S = 600
GRID = """group: install-check
base: {dataset: moons, epochs: 1, batch_size: 256, width: 32, depth: 2}
grid: {seed: [0]}
"""
# A module that must never be imported by flowctl's own child processes.
SHADOW = "raise ImportError('the working folder shadowed flowctl')\n"


def clean_env() -> dict[str, str]:
    """A user's shell: no PYTHONPATH onto this checkout, no run root, no venv, wandb offline."""
    drop = ("PYTHONPATH", "FLOWCTL_CKPT_DIR", "VIRTUAL_ENV", "WANDB_SERVICE", "PYTHONSAFEPATH")
    env = {key: value for key, value in os.environ.items() if key not in drop}
    return {**env, "WANDB_MODE": "offline", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def run(argv: list[str | Path], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (
        f"{' '.join(map(str, argv))} in {cwd} exited {done.returncode}:\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def copy_source(destination: Path) -> Path:
    """This checkout's working tree as a user's clone has it: the files git tracks or would
    track (no .venv, no run outputs)."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listing.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def uv_program() -> str:
    found = shutil.which("uv", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert found, "uv is not installed: pip install uv (it is in the dev extras)"
    return found


def install(mode: str, source: Path, venv: Path) -> Path:
    """Install flowctl from `source` the way `mode` says; returns the venv's bin folder."""
    if mode == "make install":
        run(["make", "install", f"TORCH={TORCH}", f"PYTHON={sys.executable}"], cwd=source)
        return source / ".venv" / "bin"
    if mode == "uv pip install -e .":
        run([uv_program(), "venv", "--seed", "--quiet", venv], cwd=source)
    else:
        run([sys.executable, "-m", "venv", venv], cwd=source)
    bin_dir = venv / "bin"
    run([bin_dir / "pip", "install", "--quiet", TORCH], cwd=source)
    if mode == "uv pip install -e .":
        run([uv_program(), "pip", "install", "--quiet", "--python", bin_dir / "python", "-e", "."],
            cwd=source)
    else:
        run([bin_dir / "pip", "install", "--quiet", *(["-e"] if "-e" in mode else []), "."],
            cwd=source)
    return bin_dir


def experiment_folder(path: Path, *, shadow: bool = False) -> Path:
    """A working folder laid out like the study's: study/checkpoints/ and study/datasets/,
    and with `shadow` a study/__init__.py that fails on import as well."""
    (path / "study" / "checkpoints").mkdir(parents=True)
    (path / "study" / "datasets").mkdir(parents=True)
    if shadow:
        (path / "study" / "__init__.py").write_text(SHADOW)
    (path / "grid.yaml").write_text(GRID)
    return path


def check_ui_serves_its_page(bin_dir: Path, cwd: Path) -> None:
    server = subprocess.Popen([bin_dir / "flowctl", "ui", "--port", "0", "--json"], cwd=cwd,
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL)
    try:
        line = server.stdout.readline()  # the start line, once it listens (EOF if it died)
        assert line, f"flowctl ui did not start: {server.stderr.read()[-2000:]}"
        url = json.loads(line)["url"].rstrip("/")
        status, _, page = http_get(f"{url}/")
        assert status == 200 and b"<html" in page.lower(), page[:300]
        status, _, script = http_get(f"{url}/static/app.js")  # the page's files are installed
        assert status == 200 and script, f"static/app.js: {status}"
        runs = json.loads(http_get(f"{url}/api/runs")[2])["runs"]
        assert {"study-a", "study-b"} <= {row["folder"] for row in runs}
    finally:
        server.terminate()
        server.communicate(timeout=60)


MODES = ["pip install -e .", "pip install .", "make install", "uv pip install -e ."]


@pytest.mark.parametrize("mode", MODES)
def test_every_install_runs_every_kind_of_process_from_a_study_folder(mode: str, tmp_path: Path):
    source = copy_source(tmp_path / "flowctl")
    bin_dir = install(mode, source, tmp_path / "venv")
    experiments = experiment_folder(tmp_path / "experiments")

    where = run([bin_dir / "python", "-c", "import study; print(study.__file__)"], experiments)
    assert Path(where.stdout.strip()).parent.parent != experiments, where.stdout
    assert run([bin_dir / "flowctl", "--version"], experiments).stdout == f"flowctl {study.__version__}\n"

    train = [bin_dir / "python", "-m", "study.flow_matching.train", "--dataset", "moons",
             "--epochs", "1", "--width", "32", "--depth", "2"]
    for name in ("study-a", "study-b"):  # the second sees the first's study/checkpoints/ run
        run([*train, "--run-name", name], experiments)
        assert (experiments / "study" / "checkpoints" / name / "best.pt").is_file()

    summary = json.loads(run([bin_dir / "flowctl", "inspect-ckpt", "study-a", "--json"],
                             experiments).stdout)
    expected = "wheel" if mode == "pip install ." else f"editable {source}"
    assert summary["flowctl_install"] == expected, summary["flowctl_install"]
    run_json = json.loads((experiments / "study" / "checkpoints" / "study-a" / "run.json").read_text())
    assert (run_json["flowctl_version"], run_json["flowctl_install"]) == (study.__version__, expected)

    sweep = run([bin_dir / "flowctl", "sweep", "grid.yaml"], experiments)
    assert "1 finished" in sweep.stdout + sweep.stderr, sweep.stdout + sweep.stderr

    run([bin_dir / "flowctl", "train", "--dataset", "moons", "--epochs", "1", "--width", "32",
         "--depth", "2", "--nproc", "2", "--run-name", "ddp"], experiments)
    assert (experiments / "study" / "checkpoints" / "ddp" / "best.pt").is_file()

    check_ui_serves_its_page(bin_dir, experiments)

    if mode == "pip install -e .":
        # A study/__init__.py of the user's own in the working folder: flowctl's children (the
        # sweep's points, torchrun's workers) still import flowctl (PYTHONSAFEPATH).
        shadowed = experiment_folder(tmp_path / "shadowed", shadow=True)
        sweep = run([bin_dir / "flowctl", "sweep", "grid.yaml"], shadowed)
        assert "1 finished" in sweep.stdout + sweep.stderr, sweep.stdout + sweep.stderr
        run([bin_dir / "flowctl", "train", "--dataset", "moons", "--epochs", "1", "--width", "32",
             "--depth", "2", "--nproc", "2", "--run-name", "ddp"], shadowed)
        assert (shadowed / "study" / "checkpoints" / "ddp" / "best.pt").is_file()
