"""`flowctl compare --group G`: mean and spread over seeds of real runs, table/JSON/Markdown/PNG."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.support.helpers import TINY, cli, run_json, vectors_file


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """2 flows x 2 seeds of group `cmp` (1 epoch each), a run of another group, one eval;
    trained once for the whole module (every command gets --ckpt-dir)."""
    folder = tmp_path_factory.mktemp("compare")
    data, root = vectors_file(folder), folder / "ckpt"
    for flow in ("icfm", "otcfm"):
        for seed in (0, 1):
            result = cli("train", "--dataset", data, "--epochs", "1", "--flow", flow, "--seed",
                         str(seed), "--group", "cmp", "--run-name", f"{flow}-s{seed}",
                         "--ckpt-dir", root, *TINY)
            assert result.exit_code == 0, result.stderr
    other = cli("train", "--dataset", data, "--epochs", "1", "--group", "other",
                "--run-name", "elsewhere", "--ckpt-dir", root, *TINY)
    assert other.exit_code == 0, other.stderr
    evaluated = cli("eval", "icfm-s0", "--n", "100", "--steps", "4", "--ckpt-dir", root)
    assert evaluated.exit_code == 0, evaluated.stderr
    return root


def compare(root, *args):
    return cli("compare", "--ckpt-dir", root, *args)


def test_rows_by_the_varying_key_with_mean_and_std_over_seeds(root):
    best = {name: run_json(root / name)["best_val_loss"]
            for name in ("icfm-s0", "icfm-s1", "otcfm-s0", "otcfm-s1")}
    result = compare(root, "--group", "cmp", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["by"] == ["flow"]  # seed and run_name do not make rows
    rows = {row["flow"]: row for row in data["rows"]}
    for flow in ("icfm", "otcfm"):
        values = [best[f"{flow}-s0"], best[f"{flow}-s1"]]
        assert rows[flow]["n"] == 2
        assert rows[flow]["mean"] == pytest.approx(statistics.fmean(values))
        assert rows[flow]["std"] == pytest.approx(statistics.stdev(values))
        assert rows[flow]["runs"] == {f"{flow}-s0": values[0], f"{flow}-s1": values[1]}
    assert [row["mean"] for row in data["rows"]] == sorted(row["mean"] for row in data["rows"])
    assert "elsewhere" not in result.stdout


def test_table_markdown_and_plot(root, tmp_path):
    table = compare(root, "--group", "cmp", "--by", "flow,seed")
    assert table.exit_code == 0, table.stderr
    assert "mean ± std" in table.stdout and "icfm" in table.stdout
    markdown = compare(root, "--group", "cmp", "--markdown").stdout.splitlines()
    assert markdown[0] == "| flow | n | val_loss (mean ± std) |"
    assert markdown[1] == "|---|---|---|" and len(markdown) == 4
    out = tmp_path / "figs" / "cmp.png"
    plotted = compare(root, "--group", "cmp", "--plot", out)
    assert plotted.exit_code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_metric_uses_eval_json_and_names_what_is_missing(root):
    result = compare(root, "--group", "cmp", "--metric", "eval_w2", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [list(row["runs"]) for row in data["rows"]] == [["icfm-s0"]]
    assert data["skipped"]["otcfm-s1"].startswith("no eval.json")


@pytest.mark.parametrize("args, fragment", [
    (["--group", "nope"], "no runs of group 'nope'"),
    (["--group", "cmp", "--metric", "accuracy"], "unknown --metric 'accuracy'"),
    (["--group", "cmp", "--by", "colour"], "--by 'colour' is not a config key"),
    (["--group", "cmp", "--json", "--markdown"], "choose one of --json and --markdown"),
])
def test_bad_input_is_one_line_exit_2(root, args, fragment):
    result = compare(root, *args)
    assert result.exit_code == 2 and fragment in result.stderr
    assert result.stderr.count("\n") == 1
