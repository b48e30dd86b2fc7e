"""Issue 24, leaks and injection: credentials glued to names, values that would become shell
lines in a Slurm script, terminal escapes in file data, files read from outside the root."""

from __future__ import annotations

import json

import pytest

from tests.helpers import cli, run_flags, vectors_file

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
