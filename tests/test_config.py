"""TrainingConfig: defaults, naming, YAML loading, one-line errors and the stage schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from study.data.augment import AUGMENTATIONS
from study.errors import UsageError
from study.flow_matching import config, flows, models
from study.flow_matching.config import StageConfig, TrainingConfig
from study.flow_matching.config_load import config_from_dict, load_config
from study.flow_matching.stages import plan_stages, stage_for_epoch

PRIMITIVES = (str, int, float, bool, type(None))


def _walk_primitives(value, where: str = "config") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"expected str keys at {where}, got {key!r}"
            _walk_primitives(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk_primitives(item, f"{where}[{index}]")
    else:
        assert isinstance(value, PRIMITIVES), f"expected a primitive at {where}, got {type(value)}"


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message, f"expected a one-line message, got {message!r}"
    for needle in needles:
        assert needle in message, f"expected {needle!r} in {message!r}"


# -- defaults and naming -------------------------------------------------------------------

def test_defaults_are_valid() -> None:
    cfg = TrainingConfig()
    assert cfg.validate() is cfg
    assert cfg.stages == []
    assert cfg.teacher is None


def test_name_is_built_from_arch_flow_dataset_aug() -> None:
    assert TrainingConfig().name == "mlp-icfm-moons-none"
    cfg = TrainingConfig(arch="resmlp", flow="otcfm", dataset="circles", aug="noise")
    assert cfg.name == "resmlp-otcfm-circles-noise"


def test_run_name_overrides_the_built_name() -> None:
    assert TrainingConfig(flow="otcfm", run_name="my-run").name == "my-run"


# -- to_dict / config_from_dict ------------------------------------------------------------

def test_to_dict_holds_only_primitives_and_round_trips() -> None:
    cfg = TrainingConfig(
        arch="resmlp", flow="otcfm", lr=3e-4, teacher="teacher.pt", run_name="r",
        stages=[StageConfig(name="warm", epochs=2, lr=1e-4),
                StageConfig(name="main", epochs=3, flow="icfm", sigma=0.0)],
    )
    raw = cfg.to_dict()
    _walk_primitives(raw)
    assert raw["stages"][0] == {"name": "warm", "epochs": 2, "lr": 1e-4, "flow": None,
                                "sigma": None, "aug": None, "aug_std": None, "teacher": None}
    rebuilt = config_from_dict(raw)
    assert rebuilt == cfg
    assert all(isinstance(stage, StageConfig) for stage in rebuilt.stages)
    assert rebuilt.to_dict() == raw


def test_config_from_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(UsageError) as err:
        config_from_dict(["lr", 1], source="my.yaml")
    _assert_one_line(err, "my.yaml", "mapping")


# -- arch checking -------------------------------------------------------------------------

def test_any_arch_accepted_without_check_arch() -> None:
    cfg = TrainingConfig(arch="my-custom-net")
    assert cfg.validate(check_arch=False) is cfg


def test_any_arch_label_is_valid_but_network_must_be_built_in() -> None:
    assert TrainingConfig(arch="verify").validate().arch == "verify"
    with pytest.raises(UsageError) as err:
        TrainingConfig(network="my-custom-net").validate(check_arch=True)
    _assert_one_line(err, "network", "my-custom-net", "mlp", "resmlp")


@pytest.mark.parametrize("label", ["a/b", "..", " ", "a\\b"])
def test_arch_label_must_fit_in_a_folder_name(label: str) -> None:
    with pytest.raises(UsageError) as err:
        TrainingConfig(arch=label).validate()
    _assert_one_line(err, "--arch", "folder name")


def test_load_config_passes_check_arch_through(tmp_path: Path) -> None:
    path = _write(tmp_path, "network: my-custom-net\n")
    assert load_config(path, check_arch=False).network == "my-custom-net"
    with pytest.raises(UsageError):
        load_config(path)


# -- load_config ---------------------------------------------------------------------------

def test_load_config_reads_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "flow: otcfm\nepochs: 7\nlr: 0.0005\nwidth: 32\n")
    cfg = load_config(path)
    assert (cfg.flow, cfg.epochs, cfg.lr, cfg.width) == ("otcfm", 7, 5e-4, 32)
    assert cfg.batch_size == TrainingConfig().batch_size


def test_cli_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "flow: otcfm\nepochs: 7\nlr: 0.0005\n")
    cfg = load_config(path, {"epochs": 3, "seed": 9})
    assert (cfg.flow, cfg.epochs, cfg.lr, cfg.seed) == ("otcfm", 3, 5e-4, 9)


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    path = _write(tmp_path, "epochs: 7\n")
    cfg = load_config(path, {"epochs": None, "lr": None, "teacher": None})
    assert cfg.epochs == 7
    assert cfg.lr == TrainingConfig().lr


def test_overrides_without_a_file() -> None:
    cfg = load_config(None, {"flow": "fm", "sigma": 0.0})
    assert (cfg.flow, cfg.sigma) == ("fm", 0.0)


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")) == TrainingConfig()
    assert load_config(_write(tmp_path, "# only a comment\n", "c.yaml")) == TrainingConfig()


def test_ints_widen_to_floats_for_float_fields(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "lr: 1\nsigma: 0\nema_decay: 0\n"))
    for key, expected in (("lr", 1.0), ("sigma", 0.0), ("ema_decay", 0.0)):
        value = getattr(cfg, key)
        assert type(value) is float, f"expected {key} to be a float, got {type(value)}"
        assert value == expected


# -- one-line UsageErrors ------------------------------------------------------------------

VALID_KEY_SAMPLE = ("arch", "epochs", "lr", "stages", "warmup_steps")


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        pytest.param({"learning_rate": 0.1}, ("learning_rate", *VALID_KEY_SAMPLE), id="unknown-key"),
        pytest.param({"flow": "magic"}, ("flow", "magic", *config.FLOW_NAMES), id="unknown-flow"),
        pytest.param({"aug": "rotate"}, ("aug", "rotate", *config.AUG_NAMES), id="unknown-aug"),
        pytest.param({"activation": "swish"},
                     ("activation", "swish", *config.ACTIVATION_NAMES), id="unknown-activation"),
        pytest.param({"lr": -0.1}, ("lr", "-0.1"), id="negative-lr"),
        pytest.param({"lr": 0}, ("lr",), id="zero-lr"),
        pytest.param({"epochs": 0}, ("epochs",), id="zero-epochs"),
        pytest.param({"warmup_steps": -1}, ("warmup_steps",), id="negative-warmup"),
        pytest.param({"ema_decay": 1.0}, ("ema_decay",), id="ema-decay-one"),
        pytest.param({"val_fraction": 0}, ("val_fraction",), id="val-fraction-zero"),
        pytest.param({"val_fraction": 1}, ("val_fraction",), id="val-fraction-one"),
        pytest.param({"epochs": "ten"}, ("epochs", "ten"), id="epochs-str"),
        pytest.param({"lr": [1]}, ("lr",), id="lr-list"),
        pytest.param({"epochs": True}, ("epochs",), id="epochs-bool"),
        pytest.param({"epochs": 1.5}, ("epochs",), id="epochs-float"),
        pytest.param({"flow": None}, ("flow",), id="flow-empty"),
    ],
)
def test_bad_values_are_one_line_usage_errors(tmp_path: Path, raw: dict, needles: tuple) -> None:
    with pytest.raises(UsageError) as err:
        config_from_dict(raw).validate()
    _assert_one_line(err, *needles)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        pytest.param("- lr\n- 0.1\n", ("mapping", "list"), id="yaml-list"),
        pytest.param("just a string\n", ("mapping", "str"), id="yaml-scalar"),
        pytest.param("lr: [1, 2\nepochs: {a: 1\n", ("not valid YAML",), id="unbalanced-brackets"),
        pytest.param("learning_rate: 0.1\n", ("learning_rate", "valid keys"), id="unknown-key"),
    ],
)
def test_bad_yaml_files_are_one_line_usage_errors(tmp_path: Path, text: str, needles: tuple) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(UsageError) as err:
        load_config(path)
    _assert_one_line(err, str(path), *needles)


def test_missing_config_file_is_a_one_line_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(UsageError) as err:
        load_config(path)
    _assert_one_line(err, str(path))


def test_unknown_override_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        load_config(None, {"epoch": 3})
    _assert_one_line(err, "'epoch'", "epochs")


# -- stages --------------------------------------------------------------------------------

def test_stages_from_yaml_become_stage_configs(tmp_path: Path) -> None:
    path = _write(tmp_path, "stages:\n  - {name: warm, epochs: 2, lr: 1}\n"
                            "  - {name: main, epochs: 3, flow: otcfm}\n")
    cfg = load_config(path)
    assert cfg.stages == [StageConfig(name="warm", epochs=2, lr=1.0),
                          StageConfig(name="main", epochs=3, flow="otcfm")]
    assert type(cfg.stages[0].lr) is float


@pytest.mark.parametrize(
    ("stages", "needles"),
    [
        pytest.param([{"name": "a", "epochs": 2, "speed": 3}], ("speed", "valid keys", "epochs"),
                     id="unknown-stage-key"),
        pytest.param([{"epochs": 2}], ("name", "epochs"), id="missing-name"),
        pytest.param([{"name": "a"}], ("name", "epochs"), id="missing-epochs"),
        pytest.param([{"name": "a", "epochs": 0}], ("'a'", "epochs"), id="stage-epochs-zero"),
        pytest.param([{"name": "a", "epochs": 2, "lr": -1}], ("'a'", "lr"), id="stage-negative-lr"),
        pytest.param([{"name": "a", "epochs": 2, "flow": "magic"}], ("flow", "magic"),
                     id="stage-unknown-flow"),
        pytest.param(["warm"], ("stages", "mapping"), id="stage-not-a-mapping"),
        pytest.param({"name": "a"}, ("stages", "list"), id="stages-not-a-list"),
    ],
)
def test_bad_stages_are_one_line_usage_errors(stages, needles: tuple) -> None:
    with pytest.raises(UsageError) as err:
        config_from_dict({"stages": stages}).validate()
    _assert_one_line(err, *needles)


def test_reflow_without_a_teacher_is_an_error() -> None:
    with pytest.raises(UsageError) as err:
        TrainingConfig(flow="reflow").validate()
    _assert_one_line(err, "reflow", "teacher")


def test_reflow_with_a_teacher_is_valid() -> None:
    config = TrainingConfig(flow="reflow", teacher="teacher.pt").validate()
    (stage,) = plan_stages(config)  # the one stage trains reflow on that teacher's pairs
    assert (stage.flow, stage.teacher) == ("reflow", "teacher.pt")


def test_reflow_mixed_with_other_flows_in_a_schedule_is_an_error() -> None:
    stages = [StageConfig(name="base", epochs=2),
              StageConfig(name="re", epochs=2, flow="reflow", teacher="teacher.pt")]
    with pytest.raises(UsageError) as err:
        TrainingConfig(stages=stages).validate()
    _assert_one_line(err, "reflow cannot share a stage schedule", "--teacher")


def test_reflow_in_the_first_stage_without_a_teacher_is_an_error() -> None:
    cfg = TrainingConfig(flow="reflow", stages=[StageConfig(name="only", epochs=3)])
    assert plan_stages(cfg)[0].flow == "reflow" and plan_stages(cfg)[0].teacher is None
    with pytest.raises(UsageError):
        cfg.validate()


# -- registries stay in sync ---------------------------------------------------------------

def test_arch_names_match_models() -> None:
    assert config.ARCH_NAMES == tuple(models.MODELS)


def test_flow_names_match_flows() -> None:
    assert set(flows.FLOWS) <= set(config.FLOW_NAMES)
    assert set(config.FLOW_NAMES) == set(flows.FLOWS)


def test_aug_names_match_augmentations() -> None:
    assert set(config.AUG_NAMES) == set(AUGMENTATIONS)


def test_activation_names_match_models() -> None:
    assert set(config.ACTIVATION_NAMES) == set(models.ACTIVATIONS)


# -- plan_stages / stage_for_epoch ---------------------------------------------------------

def test_no_stages_is_one_main_stage_covering_every_epoch() -> None:
    cfg = TrainingConfig(flow="otcfm", sigma=0.2, aug="noise", aug_std=0.05, epochs=4)
    stages = plan_stages(cfg)
    assert len(stages) == 1
    main = stages[0]
    assert (main.index, main.name, main.start_epoch, main.end_epoch) == (0, "main", 0, math.inf)
    assert (main.flow, main.sigma, main.aug, main.aug_std, main.lr_scale) == (
        "otcfm", 0.2, "noise", 0.05, 1.0)
    for epoch in (0, 3, 4, 1000):
        assert stage_for_epoch(stages, epoch) is main


def test_two_stages_with_overrides() -> None:
    cfg = TrainingConfig(
        flow="icfm", sigma=0.1, lr=1e-3, epochs=10, teacher="t.pt",
        stages=[StageConfig(name="warm", epochs=3, lr=2.5e-4, flow="otcfm"),
                StageConfig(name="fine", epochs=4, sigma=0.0)],
    )
    warm, fine = plan_stages(cfg.validate())
    assert (warm.index, warm.name, warm.start_epoch, warm.end_epoch) == (0, "warm", 0, 3)
    assert (warm.flow, warm.sigma, warm.teacher) == ("otcfm", 0.1, "t.pt")
    assert warm.lr_scale == pytest.approx(0.25, rel=1e-12)
    # sigma 0.0 is an override, not "unset".
    assert (fine.index, fine.name, fine.start_epoch, fine.end_epoch) == (1, "fine", 3, math.inf)
    assert (fine.flow, fine.sigma, fine.lr_scale) == ("icfm", 0.0, 1.0)
    assert [stage_for_epoch([warm, fine], e).name for e in range(10)] == ["warm"] * 3 + ["fine"] * 7
    # The last stage also covers epochs beyond the stages' sum (3 + 4 = 7).
    assert stage_for_epoch([warm, fine], 50) is fine
    assert fine.to_dict()["end_epoch"] == -1 and warm.to_dict()["end_epoch"] == 3


def test_sigma_defaults_to_the_flows_own():
    assert TrainingConfig().sigma == 0.01
    assert TrainingConfig(flow="sbcfm").sigma == 1.0  # entropic OT needs reg = 2 sigma^2 > 0
    assert load_config(None, {"flow": "sbcfm", "sigma": 0.5}).sigma == 0.5
