"""Two torchrun agents on this machine as two nodes (`--nnodes 2`, c10d rendezvous on
localhost), each running `python -m study.cli.app train` as a cluster job does: the run trains,
resumes with `--resume auto`, and ends bit-identical to the same run on one node with
`--nproc 2`. Real processes and gloo; only the two "nodes" share a host."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest

from tests.support.distributed_runs import EPOCHS, reference_runs, run_args
from tests.support.helpers import REPO_ROOT, assert_same_state, load, metrics_rows

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(args: list[str], env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Start both agents at once (the rendezvous waits for both), then wait for both."""
    endpoint, run_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8]
    child_env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, **env}
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
         "-m", "study.cli.app", "train", *args],
        cwd=REPO_ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)]
    return [subprocess.CompletedProcess(a.args, a.wait(timeout=300), *a.communicate()) for a in agents]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """test_distributed's uninterrupted runs (built once per session): "two" is the run on one
    node with `--nproc 2` that two nodes must train to the bit."""
    return reference_runs(tmp_path_factory)


def test_two_nodes_train_and_resume_like_one_node(tmp_path, references):
    def args_for(epochs: int) -> list[str]:
        return [*run_args(references["data"], epochs=epochs), "--run-name", "two"]

    nodes = {"FLOWCTL_CKPT_DIR": str(tmp_path / "two-nodes")}
    for agents in (two_nodes(args_for(EPOCHS // 2), nodes),
                   two_nodes([*args_for(EPOCHS), "--resume", "auto"], nodes)):
        failed = [f"agent {i} exit {a.returncode}:\n{a.stderr[-3000:]}"
                  for i, a in enumerate(agents) if a.returncode != 0]
        assert not failed, "\n---\n".join(failed)  # both agents' ends: which one failed first
    run, one_node = tmp_path / "two-nodes" / "two", references["root"] / "two"
    resumed = load(run / "last.pt")
    assert resumed["world_size"] == 2 and resumed["global_step"] == EPOCHS * 9
    assert_same_state(load(one_node / "last.pt"), resumed)
    assert [r["step"] for r in metrics_rows(run)] == [r["step"] for r in metrics_rows(one_node)]
