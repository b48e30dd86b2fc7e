"""Plug-ins by import path (study/plugins.py, flow_matching/networks.py, user_metrics.py):
what resolves, what is refused before anything is called, and how the config records it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from study.errors import UsageError
from study.flow_matching.config import TrainingConfig
from study.flow_matching.config_load import config_from_dict, load_config
from study.flow_matching.networks import build_network, network_spec, record_model_class
from study.flow_matching.user_metrics import check_result, user_metric
from study.plugins import resolve_target, source_sha256, target_of
from study.runs.metrics_log import METRIC_COLUMNS, MetricsLog, read_metrics
from study.sweep.grid import load_grid

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_network"
UNET = "flow_nets.unet:UNet1d"


@pytest.fixture
def example_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A package `userpkg` on sys.path whose import writes a marker file."""
    package = tmp_path / "pkgs" / "userpkg"
    package.mkdir(parents=True)
    marker = tmp_path / "imported.marker"
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, dim, hidden=8):\n"
        "        super().__init__()\n"
        "        self.net = torch.nn.Linear(dim + 1, dim)\n"
        "    def forward(self, x, t):\n"
        "        return self.net(torch.cat([x, t.expand(x.shape[0])[:, None]], 1))\n"
        "class NotANetwork:\n"
        "    def __init__(self, *args, **kwargs):\n"
        f"        open({str(marker) + '.called'!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(package.parent))
    yield marker
    for name in ("userpkg", "userpkg.nets"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(("target", "fragment"), [
    ("os:system", "a builtin, not an nn.Module subclass"),
    ("builtins:eval", "a builtin, not an nn.Module subclass"),
    ("no_such_pkg_zz.nets:Net", "install the package that provides it, or add its folder to PYTHONPATH"),
    ("collections:OrderedDict", "not an nn.Module subclass"),
    ("os.path", "write it as pkg.module:Name"),
    ("torch.nn:NoSuchThing", "has no 'NoSuchThing'"),
])
def test_hostile_or_wrong_network_targets_are_refused(target, fragment):
    with pytest.raises(UsageError) as err:
        resolve_target(target, kind="network")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_class_that_is_not_a_module_is_never_called(user_package):
    with pytest.raises(UsageError, match="not an nn.Module subclass"):
        build_network({"network": "userpkg.nets:NotANetwork"}, 2)
    assert not Path(str(user_package) + ".called").exists()


def test_function_targets_must_be_plain_functions():
    for target in ("os:system", "builtins:eval", "collections:OrderedDict"):
        with pytest.raises(UsageError, match="not a plain Python function"):
            resolve_target(target, kind="function")
    assert resolve_target("study.plugins:is_target", kind="function").__name__ == "is_target"


def test_a_user_network_is_built_with_dim_and_its_arguments(example_on_path):
    config = TrainingConfig(network=UNET, network_args={"channels": 4, "levels": 1})
    assert config.arch == "unet1d" and config.name.startswith("unet1d-")
    model = build_network(config, 5)
    assert model(torch.randn(3, 5), torch.rand(3)).shape == (3, 5)
    assert model(torch.randn(3, 5), torch.tensor(0.5)).shape == (3, 5)


def test_refused_arguments_are_one_line(example_on_path):
    with pytest.raises(UsageError, match="refused its arguments .*fix network_args"):
        build_network({"network": UNET, "network_args": {"nope": 1}}, 2)


def test_built_ins_are_short_names_for_the_same_mechanism():
    spec = network_spec({"network": "resmlp", "width": 8, "depth": 1, "activation": "relu"})
    assert spec.target == "study.flow_matching.models:ResMLP"
    assert spec.args == {"width": 8, "depth": 1, "activation": "relu"}
    # a config written before `network` existed: the arch label decides, else the mlp
    assert network_spec({"arch": "resume-test"}).target == "study.flow_matching.models:MLP"


def test_a_changed_source_file_is_one_warning(example_on_path):
    warnings = []
    build_network({"network": UNET, "network_sha256": "0" * 64}, 2, warn=warnings.append)
    assert len(warnings) == 1 and "source file changed" in warnings[0]
    current = source_sha256(resolve_target(UNET, kind="network"))
    build_network({"network": UNET, "network_sha256": current}, 2, warn=warnings.append)
    assert len(warnings) == 1


def test_a_script_class_gets_the_way_forward():
    with pytest.raises(UsageError) as err:
        build_network({"network": "__main__:MyNet"}, 2, run="r1")
    message = str(err.value)
    assert "move MyNet into a module" in message and "study.load_run('r1', model=MyNet(...))" in message


def test_flow_trainer_records_an_importable_class(example_on_path):
    from flow_nets.unet import UNet1d

    config = TrainingConfig(arch="mine")
    record_model_class(UNet1d(2), config)
    assert config.network == UNET and len(config.network_sha256) == 64
    assert target_of(type(torch.nn.Linear(1, 1))) == "torch.nn.modules.linear:Linear"

    class Local(torch.nn.Module):
        pass

    local = TrainingConfig(arch="local")
    record_model_class(Local(), local)
    assert local.network is None  # no import path reaches it: nothing recorded


def test_yaml_mapping_and_dotted_grid_keys_unfold(tmp_path, example_on_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"network": {"target": UNET, "args": {"channels": 8}}}))
    config = load_config(path, {"network_args": {"channels": 4}})
    assert (config.network, config.network_args) == (UNET, {"channels": 4})
    with pytest.raises(UsageError, match="unknown key 'nope'"):
        config_from_dict({"network": {"target": UNET, "nope": 1}})
    with pytest.raises(UsageError, match="takes --width"):
        TrainingConfig(network="mlp", network_args={"width": 3}).validate()
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": {"network": {"target": UNET, "args": {"levels": 1}}},
                                    "grid": {"network.args.channels": [4, 8]}}))
    points = load_grid(grid).points
    assert [p.name for p in points] == ["unet1d-icfm-moons-none-channels4",
                                        "unet1d-icfm-moons-none-channels8"]
    assert points[1].config.network_args == {"levels": 1, "channels": 8}
    assert points[0].config_hash != points[1].config_hash


def test_user_metric_results_are_checked():
    assert check_result({"a": 1, "b": torch.tensor(2.5)}, "m:f") == {"a": 1.0, "b": 2.5}
    for bad, fragment in (([1], "expected a dict"), ({"w2": 1.0}, "none of"),
                          ({"a b": 1.0}, "letters"), ({"a": "x"}, "expected a number")):
        with pytest.raises(UsageError, match=fragment):
            check_result(bad, "m:f")


def test_user_metric_gets_samples_data_and_config(example_on_path):
    metric = user_metric({"eval_fn": "flow_nets.metrics:moment_errors", "seed": 3})
    scores = metric(torch.zeros(10, 2), torch.ones(10, 2))
    assert scores == {"mean_error": 1.0, "std_error": 0.0}
    assert user_metric({"eval_fn": None}) is None


def test_metrics_csv_adds_a_column_for_a_new_key_and_keeps_earlier_rows(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"step": 1, "epoch": 0, "train/loss": 1.0, "metrics/stage_id": 0})
    log.append({"step": 2, "epoch": 0, "eval/mine": 0.5, "train/loss/warm": 0.9})
    log.append({"step": 3, "epoch": 1, "train/loss": 0.8})
    log.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert list(rows[0]) == [*METRIC_COLUMNS, "eval/mine", "train/loss/warm"]
    assert [row["eval/mine"] for row in rows] == ["", "0.5", ""]
    assert rows[0]["train/loss"] == "1.0" and rows[1]["train/loss/warm"] == "0.9"
    # a resume keeps the file's columns and drops the rows past its checkpoint
    again = MetricsLog(tmp_path)
    again.truncate_after(2)
    again.append({"step": 3, "epoch": 1, "eval/other": 2.0})
    again.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert list(rows[0])[-3:] == ["eval/mine", "train/loss/warm", "eval/other"]
    assert [row["step"] for row in rows] == ["1", "2", "3"]


def test_a_dataset_function_is_called_with_seed_and_args_and_checksummed(example_on_path):
    from study.data.dataset import resolve_dataset

    target = "flow_nets.data:smooth_signals"
    splits = resolve_dataset(target, seed=1, val_fraction=0.1, args={"rows": 200, "dim": 6})
    assert tuple(splits.train.shape) == (200, 6) and tuple(splits.test.shape) == (20, 6)
    again = resolve_dataset(target, seed=1, val_fraction=0.1, args={"rows": 200, "dim": 6})
    other = resolve_dataset(target, seed=2, val_fraction=0.1, args={"rows": 200, "dim": 6})
    assert splits.checksum == again.checksum != other.checksum
    assert TrainingConfig(dataset=target).name == "mlp-icfm-smooth_signals-none"
    config = config_from_dict({"dataset": {"target": target, "args": {"dim": 4}}})
    assert (config.dataset, config.dataset_args) == (target, {"dim": 4})


def test_bad_dataset_functions_are_one_line(user_package):
    from study.data.user_dataset import call_dataset_function

    with pytest.raises(UsageError, match="not a plain Python function"):
        call_dataset_function("os:system", seed=0)
    nets = Path(user_package).parent / "pkgs" / "userpkg" / "data.py"
    nets.write_text("def flat(seed):\n    return [1, 2, 3]\n"
                    "def ragged(seed):\n    return {'train': [[1.0, 2.0]], 'val': [[1.0]]}\n"
                    "def broken(seed):\n    raise RuntimeError('no disk')\n")
    for name, fragment in (("flat", "expected"), ("ragged", "columns"), ("broken", "raised RuntimeError: no disk")):
        with pytest.raises(UsageError, match=fragment):
            from study.data.dataset import resolve_dataset

            resolve_dataset(f"userpkg.data:{name}", seed=0, val_fraction=0.1)
    with pytest.raises(UsageError, match="dataset_args is for a dataset given as pkg.module:function"):
        TrainingConfig(dataset_args={"a": 1}).validate()


def test_import_study_and_list_runs_stay_light(isolated_run_root):
    import subprocess

    code = ("import sys, study; rows = study.list_runs(); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(rows)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
