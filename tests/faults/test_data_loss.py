"""Issue 24, data loss: attacks that used to delete or overwrite what a command was not asked
to touch. Each asserts the outcome, the exit code and stderr, and that nothing outside the
run folder (or the requested output) changed."""

from __future__ import annotations

import json
import os
import shutil

import torch

from study.runs.removal import remove_run
from study.runs.status import read_run
from tests.support.attacks import fingerprint, make_run
from tests.support.helpers import cli, error_line, load, run_flags, run_json, vectors_file


def prune(*args: str) -> tuple[dict, str]:
    result = cli("prune", "--json", *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout), result.stderr


# -- 1. prune ranks, deletes and reports by folder ------------------------------------------------
def test_prune_keeps_a_backup_copy_and_a_symlink_apart_from_the_run(isolated_run_root):
    """`cp -r good good-backup; ln -s good latest`: three folders whose run.json say `good`.
    --keep-best 1 keeps the best folder, removes the other copy and `bad`, keeps the link."""
    root = isolated_run_root
    make_run(root, "good", group="abl", best=0.1)
    make_run(root, "bad", group="abl", best=0.5)
    shutil.copytree(root / "good", root / "good-backup")
    os.symlink("good", root / "latest")
    plan, stderr = prune("--keep-best", "1", "--group", "abl")
    assert sorted(row["folder"] for row in plan["runs"]) == ["bad", "good-backup"]
    assert [link["folder"] for link in plan["kept_links"]] == ["latest"]

    result = cli("prune", "--keep-best", "1", "--group", "abl", "--yes")
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("removed") and "good-backup (run good)" in line for line in lines)
    assert any(line.startswith("removed") and " bad " in line for line in lines)
    assert any(line.startswith("kept") and "latest" in line and "symlink" in line for line in lines)
    assert lines[-1].startswith("freed") and "2 run folders removed" in lines[-1]
    assert sorted(path.name for path in root.iterdir()) == ["good", "latest"]
    assert (root / "good" / "last.pt").is_file() and (root / "latest" / "run.json").is_file()


def test_prune_reports_each_folder_once_when_names_repeat(isolated_run_root):
    root = isolated_run_root
    for folder in ("x1", "x2", "x3"):
        make_run(root, folder, status="failed", run_name="same")
    done, _ = prune("--status", "failed", "--yes")
    assert sorted((row["folder"], row["action"]) for row in done["runs"]) == [
        ("x1", "removed"), ("x2", "removed"), ("x3", "removed")]
    assert done["freed_bytes"] == done["would_free_bytes"] > 0
    assert list(root.iterdir()) == []


# -- 2. nothing that deletes follows a symlink ----------------------------------------------------
def test_prune_never_follows_a_symlinked_run_folder(tmp_path, isolated_run_root):
    """`ln -s ../outside checkpoints/scratch; flowctl prune --status unknown --yes`."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "thesis.tex").write_text("years of work")
    (outside / "run.json").write_text('{"status": "failed", "group": "g"}')
    isolated_run_root.mkdir()
    os.symlink(outside, isolated_run_root / "scratch")
    make_run(isolated_run_root, "real-junk", status="failed")
    before = fingerprint(tmp_path, skip=(isolated_run_root,))
    for rule in ("unknown", "failed", "unknown,failed,finished"):
        done, stderr = prune("--status", rule, "--yes")
        assert stderr == ""
        assert [link["folder"] for link in done["kept_links"]] in ([], ["scratch"])
    assert fingerprint(tmp_path, skip=(isolated_run_root,)) == before
    assert os.path.islink(isolated_run_root / "scratch") and not (outside / "run.lock").exists()
    assert not (isolated_run_root / "real-junk").exists()
    listing = json.loads(cli("list-runs", "--json").stdout)
    assert [(row["run_name"], row["status"]) for row in listing] == [("scratch", "unknown")]
    assert "outside the checkpoint root" in listing[0]["reason"]


def test_prune_removes_a_link_inside_a_run_folder_not_its_target(tmp_path, isolated_run_root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.npy").write_bytes(b"precious")
    folder = make_run(isolated_run_root, "junk", status="failed")
    os.symlink(outside, folder / "data")
    os.symlink(outside / "data.npy", folder / "copy.npy")
    before = fingerprint(outside)
    done, _ = prune("--status", "failed", "--yes")
    assert [row["action"] for row in done["runs"]] == ["removed"]
    assert fingerprint(outside) == before and not folder.exists()


def test_a_folder_swapped_for_a_symlink_after_the_scan_is_skipped(tmp_path, isolated_run_root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    folder = make_run(isolated_run_root, "swapped", status="failed")
    scanned = read_run(folder)
    shutil.rmtree(folder)
    os.symlink(outside, folder)
    outcome = remove_run(scanned)
    assert outcome.action == "skipped" and "symlink" in outcome.note
    assert sorted(path.name for path in outside.iterdir()) == ["keep.txt"]


# -- 3. resume writes into the folder it was asked to resume --------------------------------------
def trained(root, tmp_path, name: str = "exp") -> None:
    result = cli("train", "--run-name", name, *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr


def test_resume_of_a_copied_run_folder_leaves_the_original_untouched(tmp_path, isolated_run_root):
    """`cp -r exp exp-e1; flowctl resume exp-e1 --epochs 2`: exp-e1 is continued and renamed,
    exp stays byte for byte."""
    trained(isolated_run_root, tmp_path)
    shutil.copytree(isolated_run_root / "exp", isolated_run_root / "exp-e1")
    copy = isolated_run_root / "exp-e1"
    before = fingerprint(tmp_path, skip=(copy,))
    result = cli("resume", "exp-e1", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    renamed = [line for line in result.stderr.splitlines() if "renamed exp-e1" in line]
    assert len(renamed) == 1 and renamed[0].startswith("warning: "), result.stderr
    assert fingerprint(tmp_path, skip=(copy,)) == before
    assert run_json(copy)["run_name"] == "exp-e1" and run_json(copy)["epoch"] == 2
    assert load(copy / "last.pt")["config"]["run_name"] == "exp-e1"


def test_resume_after_mv_does_not_recreate_the_old_folder(tmp_path, isolated_run_root):
    trained(isolated_run_root, tmp_path, "a")
    (isolated_run_root / "a").rename(isolated_run_root / "b")
    before = fingerprint(tmp_path, skip=(isolated_run_root / "b",))
    result = cli("resume", "b", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    assert not (isolated_run_root / "a").exists()
    assert fingerprint(tmp_path, skip=(isolated_run_root / "b",)) == before
    assert run_json(isolated_run_root / "b")["status"] == "finished"


def test_resume_of_a_checkpoint_outside_the_root_is_refused(tmp_path, isolated_run_root):
    trained(isolated_run_root, tmp_path)
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(isolated_run_root / "exp" / "last.pt", loose / "last.pt")
    before = fingerprint(tmp_path)
    error_line(cli("resume", loose / "last.pt", "--epochs", "2"),
               "not in a run folder under the checkpoint root", "--ckpt-dir")
    assert fingerprint(tmp_path) == before


# -- 4. sample --out never overwrites a run's files, nor any file without --force -----------------
def test_sample_out_refuses_a_runs_own_files_and_existing_files(tmp_path, isolated_run_root):
    trained(isolated_run_root, tmp_path)
    run = isolated_run_root / "exp"
    (tmp_path / "mine.pt").write_bytes(b"someone's file")
    os.symlink(run / "last.pt", tmp_path / "link.pt")
    before = fingerprint(tmp_path)
    sample = ("sample", "exp", "--n", "10", "--steps", "2", "--out")
    for name in ("last.pt", "best.pt", "metrics.csv", "run.json"):
        for force in ((), ("--force",)):
            error_line(cli(*sample, run / name, *force), "is a file of the run folder",
                       "never overwrites")
    error_line(cli(*sample, tmp_path / "link.pt", "--force"), "is a file of the run folder")
    error_line(cli(*sample, tmp_path / "mine.pt"), "already exists", "--force")
    error_line(cli(*sample, tmp_path / "samples.csv"), "'.csv' is not a format", ".pt, .npy")
    error_line(cli(*sample, tmp_path / "samples"), "no extension")
    error_line(cli(*sample, tmp_path / "mine.pt" / "s.pt"), "is a file, not a folder")
    error_line(cli(*sample, tmp_path, "--force"), "is a folder")
    error_line(cli(*sample, tmp_path / "s.npy", "--format", "pt"), "make them agree")
    assert fingerprint(tmp_path) == before

    replaced = cli(*sample, tmp_path / "mine.pt", "--force")
    assert replaced.exit_code == 0, replaced.stderr
    assert load(tmp_path / "mine.pt").shape == (10, 2)
    after = fingerprint(tmp_path)
    assert after.pop("mine.pt") != before.pop("mine.pt") and after == before


def test_compare_plot_never_replaces_a_runs_file_and_writes_only_known_formats(isolated_run_root):
    run = make_run(isolated_run_root, "r1", best=0.2)
    before = fingerprint(isolated_run_root)
    for name in ("metrics.csv", "run.json", "last.pt"):
        error_line(cli("compare", "--group", "g", "--plot", run / name), "is a file of the run folder")
    error_line(cli("compare", "--group", "g", "--plot", run.parent / "plot.jpgx"), "'.jpgx'")
    assert fingerprint(isolated_run_root) == before


# -- 5. best.pt and last.pt are two files ---------------------------------------------------------
def test_a_redirect_into_last_pt_leaves_best_pt(tmp_path, isolated_run_root):
    """A run whose final epoch is its best: `> last.pt` must not destroy best.pt too."""
    result = cli("train", "--run-name", "exp", "--lr", "3e-3", "--warmup-steps", "0",
                 *run_flags(vectors_file(tmp_path), epochs=2))
    assert result.exit_code == 0, result.stderr
    run = isolated_run_root / "exp"
    assert load(run / "best.pt")["global_step"] == load(run / "last.pt")["global_step"], \
        "expected the last epoch to be the best"
    with open(run / "last.pt", "wb"):  # `> last.pt`
        pass
    assert load(run / "best.pt")["epoch"] == 1
    inspected = cli("inspect-ckpt", "exp")
    assert inspected.exit_code == 0, inspected.stderr


def test_a_renamed_resume_does_not_continue_the_originals_wandb_run(tmp_path, isolated_run_root):
    from study.flow_matching.resume import plan_resume

    trained(isolated_run_root, tmp_path)
    checkpoint = load(isolated_run_root / "exp" / "last.pt")
    checkpoint["wandb_run_id"] = "abc123"
    torch.save(checkpoint, isolated_run_root / "exp" / "last.pt")
    shutil.copytree(isolated_run_root / "exp", isolated_run_root / "exp-copy")
    lines = []
    config, point = plan_resume("exp-copy", {}, None, warn=lines.append)
    assert config.name == "exp-copy" and point.payload["wandb_run_id"] is None
    assert len(lines) == 1 and "new wandb run" in lines[0]
    config, point = plan_resume("exp", {}, None, warn=lines.append)
    assert config.name == "exp" and point.payload["wandb_run_id"] == "abc123"


def test_nothing_writes_or_deletes_through_a_symlinked_run_folder(tmp_path, isolated_run_root):
    """`ln -s ../outside checkpoints/scratch`: `train --overwrite` would clear the target's
    best.pt/last.pt/run.json/metrics.csv and put its lock there; it is refused instead."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("best.pt", "last.pt", "run.json", "metrics.csv"):
        (outside / name).write_text(f"someone's {name}")
    isolated_run_root.mkdir()
    os.symlink(outside, isolated_run_root / "scratch")
    data = vectors_file(tmp_path)
    before = fingerprint(tmp_path, skip=(isolated_run_root,))
    for extra in ((), ("--overwrite",)):
        error_line(cli("train", "--run-name", "scratch", *extra, *run_flags(data, epochs=1)),
                   "scratch is a symlink", "real run folders")
    for command in ("resume", "inspect-ckpt", "sample", "eval"):
        error_line(cli(command, "scratch"), "scratch is a symlink out of the checkpoint root")
    assert fingerprint(tmp_path, skip=(isolated_run_root,)) == before
