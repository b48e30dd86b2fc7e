"""Issue 24, crashes on bad input: a hostile file costs its own row (`unknown`, with the
reason) or one `error:` line and exit 2, never the command, a traceback or a 500."""

from __future__ import annotations

import json
import sys
import threading

import pytest
import torch
import yaml

from tests.support.attacks import fingerprint, make_run
from tests.support.helpers import cli, error_line, load, run_flags, vectors_file

BOMB_DEPTH = 100_000  # json.loads raises RecursionError
LOADABLE_DEPTH = 500  # json.loads copes; every recursive walk after it would not


def deep_json(depth: int) -> str:
    return '{"status": "finished", "group": "g", "best_val_loss": 0.1, "w2": 0.1, "config": ' \
        + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("depth", [BOMB_DEPTH, LOADABLE_DEPTH])
@pytest.mark.parametrize("name", ["run.json", "eval.json"])
def test_a_deep_json_file_costs_only_its_own_row(tmp_path, isolated_run_root, depth, name):
    from study.ui.api import DashboardApi

    make_run(isolated_run_root, "good", best=0.2)
    make_run(isolated_run_root, "deep", best=0.3)
    (isolated_run_root / "deep" / name).write_text(deep_json(depth))
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base": {"dataset": "moons", "epochs": 1}, "name": "deep",
                                    "group": "g"}))
    before = fingerprint(tmp_path)
    for args in (("list-runs",), ("list-runs", "--json"), ("prune", "--status", "failed"),
                 ("prune", "--keep-best", "1", "--group", "g", "--by", "eval_w2"),
                 ("prune", "--keep-best", "1", "--group", "g"), ("sweep", "status", grid),
                 ("sweep", "status", grid, "--json"), ("compare", "--group", "g"),
                 ("compare", "--group", "g", "--metric", "eval_w2")):
        result = cli(*args)
        assert "Traceback" not in result.stderr and result.exit_code in (0, 2), (args, result.stderr)
        assert result.exit_code == 0 or args[0] == "compare", (args, result.stderr)
    rows = {row["run_name"]: row for row in json.loads(cli("list-runs", "--json").stdout)}
    if name == "run.json":
        assert rows["deep"]["status"] == "unknown"
        assert "run.json is nested too deeply" in rows["deep"]["reason"]
    assert rows["good"]["status"] == "finished"
    api = DashboardApi(isolated_run_root)
    assert api.runs({}).status == 200 and api.run("deep", {"checkpoint": ["0"]}).status == 200
    assert len(api.runs({}).body["runs"]) == 2
    assert fingerprint(tmp_path) == before


def save_deep_checkpoint(source, path, depth: int = 5000) -> None:
    """torch.save needs ~3 frames per level: do it on a thread with room for them."""
    checkpoint = load(source)
    nested: list = []
    inner = nested
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    checkpoint["config"]["note"] = nested
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10 * depth + 1000)
    stack = threading.stack_size(256 * 1024 * 1024)
    try:
        saver = threading.Thread(target=torch.save, args=(checkpoint, path))
        saver.start()
        saver.join()
    finally:
        threading.stack_size(stack)
        sys.setrecursionlimit(limit)
    assert path.stat().st_size > 0


def test_a_deep_checkpoint_is_one_line_exit_2(tmp_path, trained_run):
    save_deep_checkpoint(trained_run / "best.pt", tmp_path / "deep.pt")
    before = fingerprint(tmp_path)
    for args in (("inspect-ckpt", tmp_path / "deep.pt"), ("inspect-ckpt", tmp_path / "deep.pt", "--json"),
                 ("sample", tmp_path / "deep.pt", "--n", "5", "--out", tmp_path / "s.pt")):
        error_line(cli(*args), "deep.pt is not a flowctl checkpoint", "nested deeper than 64")
    assert fingerprint(tmp_path) == before


# -- YAML alias bombs and grids too big to expand ------------------------------------------------
def alias_bomb(levels: int = 9) -> str:
    """~1 KB of YAML that names 9**9 (387 million) values once its aliases are expanded."""
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def peak_memory_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("where", ["grid", "base", "include", "config"])
def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, isolated_run_root, where):
    bomb = alias_bomb()
    if where == "grid":
        text = bomb + "base: {dataset: moons}\ngrid: {seed: *l8}\n"
    elif where == "base":
        text = bomb + "base: {dataset: moons, stages: *l8}\ngrid: {seed: [0]}\n"
    elif where == "include":
        text = bomb + "base: {dataset: moons}\ninclude: [{seed: 0, stages: *l8}]\n"
    else:
        text = bomb + "dataset: moons\nstages: *l8\n"
    assert len(text) < 1500
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    before, memory = fingerprint(tmp_path), peak_memory_mb()
    commands = [("train", "--config", path, "--epochs", "1")] if where == "config" else [
        ("sweep", path, "--dry-run"), ("sweep", "status", path),
        ("sweep", path, "--launcher", "print")]
    for args in commands:
        error_line(cli(*args), "bomb.yaml expands to", "more than 100,000")
    assert peak_memory_mb() - memory < 200
    assert fingerprint(tmp_path) == before and not isolated_run_root.exists()


def test_a_yaml_anchor_inside_itself_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("base: {dataset: moons}\ngrid: &g {seed: [0], lr: [*g]}\n")
    error_line(cli("sweep", path, "--dry-run"), "refers to itself")


def test_a_grid_with_too_many_points_is_refused_before_building_one(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump({"base": {"dataset": "moons"},
                                    "grid": {"seed": list(range(1000)),
                                             "lr": [10 ** -k for k in range(1, 201)]}}))
    error_line(cli("sweep", path, "--dry-run"), "expands to 200,000 points", "split it")


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("dataset: moons\nnote: caf\xe9\n".encode("latin-1"))
    error_line(cli("train", "--config", path), "latin1.yaml", "not UTF-8")
    error_line(cli("sweep", path, "--dry-run"), "latin1.yaml", "not UTF-8")


# -- a point whose folder holds another config is not the grid's result --------------------------
def test_a_point_trained_with_another_config_is_a_conflict_not_a_result(tmp_path, isolated_run_root):
    """Train a grid's two points as its launchers do, then change one point's lr in the grid:
    `sweep status` shows that point as `conflict` (never `finished`), and `compare` leaves
    its old run out of the grid's table."""
    from study.sweep.grid import load_grid
    from study.sweep.point_files import update_record, write_point_config

    data = vectors_file(tmp_path)
    grid = tmp_path / "grid.yaml"

    def write_grid(lr_of_seed_1: float) -> None:
        grid.write_text(yaml.safe_dump({
            "group": "abl", "name": "p-s{seed}",
            "base": {"dataset": str(data), "epochs": 1, "batch_size": 64, "width": 16,
                     "depth": 2, "patience": 0, "warmup_steps": 5, "checkpoint_interval": 0,
                     "lr": 0.001},
            "grid": {"seed": [0]}, "include": [{"seed": 1, "lr": lr_of_seed_1}]}))

    write_grid(0.001)
    for point in load_grid(grid).points:
        folder = isolated_run_root / point.name
        config = write_point_config(folder, point)
        update_record(folder, grid=str(grid), group="abl", config_hash=point.config_hash)
        result = cli("train", "--config", config, "--resume", "auto", "--plain",
                     "--wandb-mode", "disabled")
        assert result.exit_code == 0, result.stderr
    write_grid(0.002)

    status = json.loads(cli("sweep", "status", grid, "--json").stdout)
    states = {row["point"]: row["state"] for row in status["points"]}
    assert states == {"p-s0": "finished", "p-s1": "conflict"}
    assert "lr: 0.001 in the run, 0.002 in the grid" in status["points"][1]["conflict"]
    table = cli("sweep", "status", grid)
    assert table.exit_code == 0 and "conflict" in table.stdout and "1 conflict" in table.stdout

    compared = json.loads(cli("compare", "--group", "abl", "--json").stdout)
    assert [list(row["runs"]) for row in compared["rows"]] == [["p-s0"]]
    assert "now asks for another config" in compared["skipped"]["p-s1"]
    before = fingerprint(tmp_path)
    error_line(cli("sweep", grid, "--dry-run"), "p-s1", "holds another config")
    assert fingerprint(tmp_path) == before


# -- the dashboard: a damaged metrics.csv line, many clients at once -----------------------------
def test_a_huge_metrics_field_costs_its_own_line_not_the_rows_after_it(isolated_run_root):
    from study.ui.api import DashboardApi

    folder = make_run(isolated_run_root, "r")
    metrics = folder / "metrics.csv"
    rows = [f"{step},0,{0.5 / (step + 1)}\n" for step in range(6)]
    metrics.write_text("step,epoch,train/loss\n" + "".join(rows[:3])
                       + "3,0," + "9" * (200 * 1024) + "\n" + "".join(rows[3:]))
    api = DashboardApi(isolated_run_root)

    def steps(since: int = -1) -> list[int]:
        reply = api.metrics("r", {"since": [str(since)]})
        assert reply.status == 200, reply.body
        return [row["step"] for row in json.loads(reply.body)["rows"]]

    assert steps() == [0, 1, 2, 3, 4, 5]  # the damaged line (a 200 KiB field) is left out
    with open(metrics, "a") as handle:
        handle.write("6,1,0.1\n7,1,0.09\n")
    assert steps(5) == [6, 7] and steps() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_twenty_clients_connect_at_once(isolated_run_root):
    """The listen backlog holds 20 simultaneous connections before one is accepted (with
    socketserver's default of 5, the 7th waits for a SYN retransmit: 1 s, then 3 s...)."""
    import socket

    from study.ui.api import DashboardApi
    from study.ui.server import DashboardServer

    server = DashboardServer(DashboardApi(isolated_run_root), "127.0.0.1", 0)  # not accepting
    clients = []
    try:
        for _ in range(20):
            clients.append(socket.create_connection(("127.0.0.1", server.port), timeout=0.5))
    finally:
        for client in clients:
            client.close()
        server.server_close()
    assert len(clients) == 20


# -- seed audit: what run.json says from its first write -----------------------------------------
def test_run_json_has_progress_fields_from_its_first_write(tmp_path, isolated_run_root, monkeypatch):
    from study.runs import status as status_module

    writes = []
    real = status_module.write_json_atomic
    monkeypatch.setattr(status_module, "write_json_atomic",
                        lambda path, data: (writes.append(dict(data)), real(path, data)))
    result = cli("train", "--run-name", "p", *run_flags(vectors_file(tmp_path), epochs=1))
    assert result.exit_code == 0, result.stderr
    first = writes[0]
    assert first["status"] == "running"
    assert (first["epoch"], first["global_step"], first["total_epochs"]) == (0, 0, 1)
