"""Building a TrainingConfig from YAML files, plain dicts and checkpoints.

YAML goes through `yaml.safe_load`; unknown keys and values of the wrong type are
`UsageError`s that name the key. A checkpoint's config may predate keys added since:
`LEGACY_DEFAULTS` gives each such key the value that reproduces how the run was trained.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.flow_matching.config import SchedulerConfig, StageConfig, TrainingConfig
from study.runs.safe_read import load_yaml_file

# Keys added after the first checkpoints were written -> the behaviour those checkpoints had.
LEGACY_DEFAULTS = {"ema_warmup": False, "normalize": "standard"}
# Mappings inside the config: YAML sets them whole or in part, flags key by key.
NESTED = {"scheduler": SchedulerConfig}
# Keys that may name user code as {target, args} (docs/networks.md).
PLUGIN_KEYS = ("network", "dataset")


def _check_keys(cls: type, raw: dict[str, Any], what: str) -> None:
    """UsageError naming the first key of `raw` that `cls` has no field for."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"unknown {what} key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")


def _stage_from_dict(raw: Any) -> StageConfig:
    if not isinstance(raw, dict):
        raise UsageError(f"each entry of 'stages' must be a mapping, got {type(raw).__name__}")
    _check_keys(StageConfig, raw, "stage")
    if "name" not in raw or "epochs" not in raw:
        raise UsageError("each stage needs 'name' and 'epochs', e.g. {name: warm, epochs: 5}")
    return StageConfig(**{k: _coerce(StageConfig, k, v) for k, v in raw.items()})


_FIELD_TYPES = {
    cls: {f.name: f.type for f in dataclasses.fields(cls)}
    for cls in (TrainingConfig, StageConfig, SchedulerConfig)
}


def _coerce(cls: type, key: str, value: Any) -> Any:
    """Check a YAML/CLI value against the field's declared type (ints widen to floats)."""
    declared = str(_FIELD_TYPES[cls][key])
    if value is None:
        if "None" in declared:
            return None
        raise UsageError(f"{key} must not be empty")
    if key == "stages":
        if not isinstance(value, list):
            raise UsageError(f"stages must be a list of mappings, got {type(value).__name__}")
        return [_stage_from_dict(stage) for stage in value]
    if cls is TrainingConfig and key in NESTED:
        return _nested_from_dict(key, value)
    if declared.startswith("dict"):
        if not isinstance(value, dict):
            raise UsageError(f"{key} must be a mapping, e.g. {key}: {{hidden: 128}}, got {value!r}")
        return dict(value)
    base = declared.split("|")[0].strip()
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "str" and isinstance(value, str):
        return value
    raise UsageError(f"{key} must be a {base}, got {value!r} ({type(value).__name__})")


def config_from_dict(raw: dict[str, Any], *, source: str = "config") -> TrainingConfig:
    """Build a TrainingConfig from a plain dict; unknown keys are errors naming the key."""
    if not isinstance(raw, dict):
        raise UsageError(f"{source} must be a mapping of key: value, got {type(raw).__name__}")
    raw = unfold_network(raw, source=source)
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(
            f"unknown key {unknown[0]!r} in {source}; valid keys: {', '.join(sorted(known))}"
        )
    return TrainingConfig(**{k: _coerce(TrainingConfig, k, v) for k, v in raw.items()})


def unfold_network(raw: dict[str, Any], *, source: str = "config") -> dict[str, Any]:
    """`network: {target: pkg.module:Class, args: {...}}` (and the same for `dataset`) and a
    grid's dotted keys (`network.args.hidden: 256`, `network.target: ...`) -> the flat
    `network` / `network_args` (`dataset` / `dataset_args`) keys of TrainingConfig. Other
    keys pass through unchanged."""
    for plugin in PLUGIN_KEYS:
        raw = _unfold(raw, plugin, source)
    return raw


def _unfold(raw: dict[str, Any], plugin: str, source: str) -> dict[str, Any]:
    prefix, args_key = f"{plugin}.", f"{plugin}_args"
    flat = {key: value for key, value in raw.items()
            if key != plugin and not str(key).startswith(prefix)}
    args = dict(raw[args_key]) if isinstance(raw.get(args_key), dict) else raw.get(args_key)
    target = raw.get(plugin)
    if isinstance(target, dict):
        unknown = sorted(set(target) - {"target", "args"})
        if unknown or "target" not in target:
            raise UsageError(f"{plugin} in {source} must be a name or a mapping "
                             "{target: pkg.module:Name, args: {...}}"
                             + (f"; unknown key {unknown[0]!r}" if unknown else ""))
        if target.get("args") is not None and not isinstance(target["args"], dict):
            raise UsageError(f"{plugin}.args in {source} must be a mapping, got {target['args']!r}")
        args = {**(args or {}), **(target.get("args") or {})}
        target = target["target"]
    for key, value in raw.items():
        key = str(key)
        if key == f"{prefix}target":
            target = value
        elif key.startswith(f"{prefix}args."):
            args = {**(args or {}), key[len(f"{prefix}args."):]: value}
        elif key.startswith(prefix):
            raise UsageError(f"unknown key {key!r} in {source}; use {prefix}target or "
                             f"{prefix}args.NAME")
    if plugin in raw or f"{prefix}target" in raw:
        flat[plugin] = target
    if args is not None:
        flat[args_key] = args
    return flat


def _nested_from_dict(key: str, raw: Any):
    cls = NESTED[key]
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise UsageError(f"{key} must be a mapping, e.g. {key}: {{type: linear}}, got {raw!r}")
    _check_keys(cls, raw, key)
    return cls(**{k: _coerce(cls, k, v) for k, v in raw.items()})


def config_from_checkpoint(saved: dict[str, Any], *, source: str,
                           warn=print) -> TrainingConfig:
    """The config a checkpoint was trained with: keys it predates get LEGACY_DEFAULTS,
    keys this flowctl does not know are dropped with one line."""
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    ignored = sorted(set(saved) - known)
    if ignored:
        warn(f"{Path(source).name}: ignoring config keys flowctl does not know: {', '.join(ignored)}")
    raw = {**LEGACY_DEFAULTS, **{k: v for k, v in saved.items() if k in known}}
    return config_from_dict(raw, source=source)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None,
                *, check_arch: bool = True) -> TrainingConfig:
    """Read a YAML file (if given), apply `overrides` (None values are ignored), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        loaded = load_yaml_file(path, what="config")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UsageError(f"config {path} must be a mapping of key: value, got {type(loaded).__name__}")
        raw.update(unfold_network(loaded, source=str(path)))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in NESTED and isinstance(value, dict) and isinstance(raw.get(key), dict):
            value = {**raw[key], **value}  # a flag changes one key of the file's mapping
        raw[key] = value
    return config_from_dict(raw, source=str(path) if path else "config").validate(check_arch=check_arch)


def assignments_to_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` words (`epochs=3 scheduler.type=linear network.args.hidden=256`), as Hydra
    users type them, -> overrides for `load_config`: dotted keys into the nested mappings,
    values read as YAML (`1e-3` as a number, `{hidden: 64}` as a mapping; a str field takes
    the text as written, `null` for None). One UsageError line for a malformed word or an
    unknown key. `sweep --launcher print` writes its points this way (sweep.commands)."""
    import difflib

    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        top, _, rest = key.partition(".")
        if not sep or not key or not all(key.split(".")):
            raise UsageError(f"expected KEY=VALUE, got {item!r} (e.g. epochs=3 scheduler.type=linear)")
        if not text:
            raise UsageError(f"{item!r} has no value; write {key}=VALUE")
        if top not in known:
            close = difflib.get_close_matches(top, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(known))}"
            raise UsageError(f"unknown config key {top!r} in {item!r}{hint}")
        if rest and top in NESTED:
            cls = NESTED[top]
            _check_keys(cls, {rest: None}, top)
            overrides.setdefault(top, {})[rest] = _read_value(text, cls, rest)
        elif rest and top in PLUGIN_KEYS:
            overrides[key] = _read_value(text, None, key)  # unfold_network checks the rest
        elif rest:
            raise UsageError(f"{top} has no keys to set with a dot, got {item!r}; write {top}=VALUE")
        else:
            overrides[key] = _read_value(text, TrainingConfig, key)
    return overrides


def _read_value(text: str, cls: type | None, key: str) -> Any:
    declared = str(_FIELD_TYPES[cls][key]) if cls is not None else ""
    if declared.split("|")[0].strip() == "str":  # the text as written; `null` where None fits
        return None if text == "null" and "None" in declared else text
    import yaml

    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        raise UsageError(f"{key}={text} is not a valid value") from None
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as text
        for number in (int, float):
            try:
                return number(value)
            except ValueError:
                continue
    return value
