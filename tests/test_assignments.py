"""`flowctl train key=value ...`: config keys as Hydra users type them, with the flags' checks.
That the words reach torchrun's workers is checked by test_custom_network's two-process run."""

from __future__ import annotations

import pytest

from study.errors import UsageError
from study.flow_matching.config_load import assignments_to_overrides, load_config
from tests.support.helpers import TINY, cli, error_line, load


def config_of(*words: str, **flags):
    return load_config(None, {**flags, **assignments_to_overrides(list(words))})


def test_values_are_read_by_the_fields_type():
    config = config_of("epochs=3", "lr=1e-3", "ema_warmup=false", "run_name=1e5",
                       "scheduler.type=linear", "scheduler.final_lr_scale=0.1")
    assert (config.epochs, config.lr, config.ema_warmup, config.run_name) == (3, 0.001, False, "1e5")
    assert (config.scheduler.type, config.scheduler.final_lr_scale) == ("linear", 0.1)


def test_plugin_keys_take_dotted_arguments():
    config = config_of("network=mlp", "width=8")
    assert (config.network, config.width) == ("mlp", 8)
    words = assignments_to_overrides(["network.target=pkg.mod:Net", "network.args.hidden=256"])
    assert words == {"network.target": "pkg.mod:Net", "network.args.hidden": 256}


@pytest.mark.parametrize(("word", "message"), [
    ("epochs", "expected KEY=VALUE, got 'epochs'"),
    ("=3", "expected KEY=VALUE, got '=3'"),
    ("scheduler..type=x", "expected KEY=VALUE"),
    ("epochs=", "'epochs=' has no value; write epochs=VALUE"),
    ("epoch=3", "unknown config key 'epoch' in 'epoch=3'; did you mean 'epochs'?"),
    ("scheduler.tipe=linear", "unknown scheduler key 'tipe'"),
    ("width.x=3", "width has no keys to set with a dot"),
    ("lr=[1, 2", "lr=[1, 2 is not a valid value"),
])
def test_malformed_words_are_one_usage_error(word, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("?", r"\?")):
        assignments_to_overrides([word])


def test_wrong_types_fail_like_yaml_values():
    with pytest.raises(UsageError, match="epochs must be a int, got 'abc'"):
        config_of("epochs=abc")


def test_train_takes_them_and_the_checkpoint_records_them(isolated_run_root):
    result = cli("train", "epochs=2", "scheduler.type=constant", "lr=2e-3", "--dataset", "moons",
                 "--run-name", "kv", *TINY)
    assert result.exit_code == 0, result.stderr
    config = load(isolated_run_root / "kv" / "best.pt")["config"]
    assert (config["epochs"], config["scheduler"]["type"], config["lr"]) == (2, "constant", 2e-3)


@pytest.mark.parametrize(("args", "fragment"), [
    (["epochs=2", "--epochs", "3"], "epochs is given twice (a flag and epochs=...); keep one"),
    (["scheduler.type=linear", "--scheduler", "step"], "scheduler is given twice"),
    (["epoch=2"], "unknown config key 'epoch'"),
])
def test_train_refuses_bad_words_with_one_line(isolated_run_root, args, fragment):
    result = cli("train", *args, "--dataset", "moons", "--run-name", "kv", *TINY)
    error_line(result, fragment)
    assert not (isolated_run_root / "kv").exists()


def test_a_flag_and_a_word_for_different_keys_of_one_mapping_combine():
    from study.cli.train import with_assignments

    merged = with_assignments({"scheduler": {"type": "linear"}}, ["scheduler.final_lr_scale=0.5"])
    assert merged["scheduler"] == {"type": "linear", "final_lr_scale": 0.5}


@pytest.mark.slow
def test_a_network_flag_and_its_argument_words_combine():
    """--network names the class, network.args.X sets one argument: no clash; the same
    argument from --network-args and a word is one."""
    from study.cli.train import with_assignments

    merged = with_assignments({"network": "pkg.mod:Net", "network_args": None},
                              ["network.args.hidden=256"])
    assert merged["network"] == "pkg.mod:Net" and merged["network.args.hidden"] == 256
    with pytest.raises(UsageError, match="network_args is given twice"):
        with_assignments({"network_args": '{"hidden": 64}'}, ["network.args.hidden=256"])
