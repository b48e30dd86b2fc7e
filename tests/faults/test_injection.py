"""Issue 24, leaks and injection: credentials glued to names, values that would become shell
lines in a Slurm script, terminal escapes in file data, files read from outside the root."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from tests.support.attacks import fingerprint
from tests.support.helpers import cli, error_line, load, run_flags, vectors_file

GLUED = "team-ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2"  # a GitHub token's shape after `team-`
TOKEN = GLUED.removeprefix("team-")


@pytest.fixture
def glued_run(tmp_path, isolated_run_root):
    result = cli("train", "--run-name", "g", "--group", GLUED,
                 *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    return isolated_run_root / "g"


def test_a_glued_token_is_masked_in_run_json_list_runs_and_inspect_ckpt(glued_run):
    assert TOKEN not in (glued_run / "run.json").read_text()
    assert json.loads((glued_run / "run.json").read_text())["group"] == "team-[SECRET]"
    for args in (("list-runs",), ("list-runs", "--json"), ("inspect-ckpt", "g"),
                 ("inspect-ckpt", "g", "--json")):
        result = cli(*args)
        assert result.exit_code == 0, result.stderr
        assert TOKEN not in result.stdout + result.stderr, args


# -- a value that would become a shell line in slurm.sbatch; names no folder can hold -------------
def grid_or_config(tmp_path, **fields):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"dataset": "moons", "epochs": 3, "run_name": "big", **fields}))
    return path


@pytest.mark.parametrize("args, fragment", [
    (["--partition", "gpu\nrm -rf ~"], "--partition 'gpu\\nrm -rf ~' is not a Slurm partition"),
    (["--partition", "gpu --wrap=x"], "is not a Slurm partition"),
    (["--job-name", "j\n#SBATCH --partition=x"], "--job-name"),
    (["--job-name", "j\x1b]0;owned\x07"], "control character"),
])
def test_slurm_submit_refuses_values_that_would_break_the_script(tmp_path, args, fragment):
    config = grid_or_config(tmp_path)
    before = fingerprint(tmp_path)
    for dry in ((), ("--dry-run",)):
        error_line(cli("slurm", "submit", config, *args, *dry), fragment)
    assert fingerprint(tmp_path) == before


def test_a_run_name_with_a_newline_never_reaches_a_script(tmp_path):
    config = grid_or_config(tmp_path, run_name="big\nrm -rf ~")
    before = fingerprint(tmp_path)
    error_line(cli("slurm", "submit", config, "--dry-run"), "control character '\\n'")
    error_line(cli("slurm", "submit", config), "control character")
    assert fingerprint(tmp_path) == before


def test_sweep_on_slurm_refuses_a_partition_with_a_newline(tmp_path, isolated_run_root):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": {"dataset": "moons", "epochs": 1},
                                    "grid": {"seed": [0, 1]}}))
    before = fingerprint(tmp_path)
    error_line(cli("sweep", grid, "--launcher", "slurm", "--dry-run", "--partition", "a\nb"),
               "is not a Slurm partition")
    assert fingerprint(tmp_path) == before


@pytest.mark.parametrize("name, fragment", [
    ("a\nb", "control character '\\n'"), ("a\rb", "control character"),
    ("x\x1b[2Jy", "control character '\\x1b'"), ("nul\x00", "control character '\\x00'"),
    ("line\u2028sep", "control character"), (".hidden", "starts with '.'"),
    ("..", "starts with '.'"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("   ", "is empty"), ("a" * 256, "256 bytes long"), ("é" * 128, "256 bytes long"),
])
def test_train_refuses_run_names_no_folder_can_hold(tmp_path, isolated_run_root, name, fragment):
    data = vectors_file(tmp_path)
    before = fingerprint(tmp_path)
    error_line(cli("train", "--run-name", name, *run_flags(data, epochs=1)), fragment)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"dataset": str(data), "run_name": name}))
    error_line(cli("train", "--config", config, *run_flags(data, epochs=1)), fragment)
    config.unlink()
    assert fingerprint(tmp_path) == before and not isolated_run_root.exists()


def test_the_longest_name_a_folder_can_hold_trains(tmp_path, isolated_run_root):
    name = "é" * 127 + "a"  # 255 bytes
    result = cli("train", "--run-name", name, *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr
    assert (isolated_run_root / name / "best.pt").is_file()


# -- terminal escapes in file data are shown, never obeyed ----------------------------------------
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m\x9b1m\r\x08\u202e"  # title, clear, colour, CSI, bidi
ESCAPE_BYTES = ("\x1b", "\x07", "\x9b", "\r", "\x08", "\u202e")


def hostile_run(root, name: str = "evil", **fields):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({
        "run_name": f"r{ESCAPES}", "group": f"g{ESCAPES}", "status": "failed",
        "error": {"type": f"E{ESCAPES}", "message": f"boom{ESCAPES}[/][bold]"},
        "config": {"flow": f"icfm{ESCAPES}[red]", "dataset": "moons", "seed": 0},
        "best_val_loss": 0.5, **fields}))
    return folder


def assert_no_escapes(text: str) -> None:
    leaked = [repr(char) for char in ESCAPE_BYTES if char in text]
    assert leaked == [], leaked


def test_list_runs_shows_escapes_in_run_json_as_question_marks(isolated_run_root):
    hostile_run(isolated_run_root)
    (isolated_run_root / f"folder{ESCAPES}").mkdir()  # a folder name: `unknown`
    for args in ((), ("--status", "failed"), ("--json",)):
        result = cli("list-runs", *args)
        assert result.exit_code == 0 and result.stderr == "", result.stderr
        assert_no_escapes(result.stdout)
    assert "boom?]0;owned??[2J?[31m?1m???[/][bold]" in cli("list-runs").stdout


def test_inspect_ckpt_shows_escapes_in_a_checkpoint_as_question_marks(tmp_path, isolated_run_root):
    result = cli("train", "--run-name", "c", *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr
    path = isolated_run_root / "c" / "best.pt"
    checkpoint = load(path)
    checkpoint["config"]["group"] = f"g{ESCAPES}"
    checkpoint["metadata"] = {"host": f"h{ESCAPES}", "saved_at": ESCAPES}
    torch.save(checkpoint, tmp_path / "evil.pt")
    shown = cli("inspect-ckpt", tmp_path / "evil.pt")
    assert shown.exit_code == 0, shown.stderr
    assert_no_escapes(shown.stdout + shown.stderr)
    assert "g?]0;owned" in shown.stdout


def test_sweep_status_and_compare_show_escapes_as_text(tmp_path, isolated_run_root):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base": {"dataset": "moons", "epochs": 1},
                                    "grid": {"seed": [0]}, "group": "g"}))
    folder = hostile_run(isolated_run_root, "mlp-icfm-moons-none-s0")
    status = cli("sweep", "status", grid)
    assert status.exit_code == 0, status.stderr
    assert_no_escapes(status.stdout + status.stderr)
    assert "?]0;own" in status.stdout

    run = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**run, "status": "finished", "group": "g"}))
    for args in ((), ("--markdown",), ("--by", "flow")):
        compared = cli("compare", "--group", "g", *args)
        assert compared.exit_code == 0, compared.stderr
        assert_no_escapes(compared.stdout + compared.stderr)


def test_an_error_line_quoting_file_data_holds_no_escape(tmp_path, isolated_run_root):
    """A config file whose unknown key is an escape sequence: the error line names it as `?`."""
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"dataset": "moons", f"key{ESCAPES}": 1}))
    line = error_line(cli("train", "--config", config, "--epochs", "1"))
    assert_no_escapes(line)


# -- nothing outside the root is read (or written) through a link in a run folder -----------------
def outside_files(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({
        "run_name": "SECRET-NAME", "group": "outside-group", "status": "finished",
        "config": {"note": "SECRET-CONFIG"}, "w2": 0.001}))
    (outside / "notes.txt").write_text("SECRET-NOTES")
    return outside


def test_a_run_json_linked_out_of_the_root_is_never_read(tmp_path, isolated_run_root):
    from study.ui.api import DashboardApi

    outside = outside_files(tmp_path)
    folder = isolated_run_root / "linked"
    folder.mkdir(parents=True)
    (folder / "run.json").symlink_to(outside / "secret.json")
    (folder / "eval.json").symlink_to(outside / "secret.json")
    before = fingerprint(tmp_path, skip=(isolated_run_root,))
    for args in (("list-runs",), ("list-runs", "--json"), ("compare", "--group", "outside-group"),
                 ("prune", "--keep-best", "0", "--group", "outside-group", "--by", "eval_w2")):
        result = cli(*args)
        assert "SECRET" not in result.stdout + result.stderr, args
    (row,) = json.loads(cli("list-runs", "--json").stdout)
    assert row["status"] == "unknown" and "symlink out of its run folder" in row["reason"]
    api = DashboardApi(isolated_run_root)
    table, page = api.runs({}).body, api.run("linked", {"checkpoint": ["0"]}).body
    assert "SECRET" not in json.dumps(table) + json.dumps(page)
    assert page["run_json"] is None and page["eval"] is None
    assert fingerprint(tmp_path, skip=(isolated_run_root,)) == before


def test_a_checkpoint_or_lock_linked_out_of_the_run_is_neither_read_nor_written(
        tmp_path, isolated_run_root):
    outside = outside_files(tmp_path)
    result = cli("train", "--run-name", "r", *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr
    run = isolated_run_root / "r"
    (run / "best.pt").unlink()
    (run / "best.pt").symlink_to(outside / "notes.txt")
    (run / "run.lock").symlink_to(outside / "notes.txt")
    before = fingerprint(tmp_path, skip=(isolated_run_root,))
    error_line(cli("inspect-ckpt", "r"), "symlink out of its run folder")
    error_line(cli("resume", "r", "--epochs", "2"), "is a symlink, not a lock file")
    done = json.loads(cli("prune", "--status", "finished", "--yes", "--json").stdout)
    assert [row["action"] for row in done["runs"]] == ["skipped"]
    assert "symlink, not a lock file" in done["runs"][0]["note"]
    assert fingerprint(tmp_path, skip=(isolated_run_root,)) == before


def test_the_dashboard_writes_nothing_not_even_a_sha256_cache(tmp_path, isolated_run_root,
                                                                monkeypatch):
    """`flowctl ui` promises to write nothing: a big checkpoint's digest is not cached by it."""
    from study.runs import checkpoint_summary
    from study.ui.api import DashboardApi

    result = cli("train", "--run-name", "r", *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr
    monkeypatch.setattr(checkpoint_summary, "SHA256_CACHE_MIN_BYTES", 10)  # every file is "big"
    before = fingerprint(tmp_path)
    page = DashboardApi(isolated_run_root).run("r", {}).body
    assert len(page["checkpoint"]["sha256"]) == 64
    assert fingerprint(tmp_path) == before and not (tmp_path / "flowctl-cache").exists()


def test_resume_notes_quoting_a_checkpoint_show_escapes_as_text(tmp_path, isolated_run_root):
    result = cli("train", "--run-name", "n", *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr
    checkpoint = load(isolated_run_root / "n" / "last.pt")
    checkpoint["stage"] = {**checkpoint["stage"], "stage_name": f"main{ESCAPES}"}
    checkpoint["config"]["group"] = f"g{ESCAPES}"
    torch.save(checkpoint, isolated_run_root / "n" / "last.pt")
    resumed = cli("train", "--resume", "n", "--epochs", "2", "--group", "other",
                  "--wandb-mode", "disabled")
    assert resumed.exit_code == 0, resumed.stderr
    assert_no_escapes(resumed.stdout + resumed.stderr)
    assert "wins over g?]0;owned" in resumed.stderr


def test_a_sweep_point_folder_linked_out_of_the_root_is_not_read_nor_trained(
        tmp_path, isolated_run_root):
    outside = outside_files(tmp_path)
    (outside / "run.json").write_text((outside / "secret.json").read_text())
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base": {"dataset": "moons", "epochs": 1}, "name": "pt",
                                    "group": "g"}))
    isolated_run_root.mkdir()
    (isolated_run_root / "pt").symlink_to(outside)
    before = fingerprint(tmp_path, skip=(isolated_run_root,))
    status = cli("sweep", "status", grid, "--json")
    assert status.exit_code == 0 and "SECRET" not in status.stdout, status.stdout
    (point,) = json.loads(status.stdout)["points"]
    assert point["state"] == "conflict" and "symlink out of the checkpoint root" in point["conflict"]
    error_line(cli("sweep", grid, "--dry-run"), "symlink out of the checkpoint root")
    assert fingerprint(tmp_path, skip=(isolated_run_root,)) == before


@pytest.mark.parametrize("group", ["../../escape", "a/b", "g" * 300])
def test_a_sweep_group_that_is_no_folder_name_writes_no_slurm_script(tmp_path, group, monkeypatch):
    """The Slurm launcher keeps its script in {root}/.sweeps/{group}: `group: ../../escape`
    would have put it outside the root."""
    from tests.support.helpers import stand_in

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"group": group, "base": {"dataset": "moons", "epochs": 1},
                                    "grid": {"seed": [0]}}))
    bin_dir = stand_in(tmp_path, "sbatch", "echo 4242")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    before = fingerprint(tmp_path)
    for dry in ((), ("--dry-run",)):
        error_line(cli("sweep", grid, "--launcher", "slurm", *dry), "the group of", "single folder name")
    assert fingerprint(tmp_path) == before
