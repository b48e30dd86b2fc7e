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
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(
            f"unknown key {unknown[0]!r} in {source}; valid keys: {', '.join(sorted(known))}"
        )
    return TrainingConfig(**{k: _coerce(TrainingConfig, k, v) for k, v in raw.items()})


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
        raw.update(loaded)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in NESTED and isinstance(value, dict) and isinstance(raw.get(key), dict):
            value = {**raw[key], **value}  # a flag changes one key of the file's mapping
        raw[key] = value
    return config_from_dict(raw, source=str(path) if path else "config").validate(check_arch=check_arch)
