"""GRID.yaml -> points: the cartesian product of `grid:`, plus `include:`, minus `exclude:`.

    name: "{name}-s{seed}"        # optional run-name template
    group: ablation               # optional; default: the grid file's stem
    base: configs/tiny.yaml       # TrainingConfig keys: a mapping, or a file beside the grid
    grid:                         # lists; every combination is a point
      flow: [icfm, otcfm]
      seed: [0, 1]
    include: [{flow: fm, seed: 0}]        # extra points (base + these keys)
    exclude: [{flow: otcfm, seed: 1}]     # drop the points that match every key given

Every key under `grid:` is part of the default run name, even with one value, so that
adding a seed later adds points instead of renaming the existing ones. No torch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.flow_matching.config import TrainingConfig
from study.flow_matching.config_load import PLUGIN_KEYS, config_from_dict
from study.runs.safe_read import load_yaml_file
from study.sweep.identity import config_hash

GRID_KEYS = ("name", "group", "base", "grid", "include", "exclude")
# How a grid key shows in the default run name: `-s0` for seed 0, `-lr0.001` for lr.
NAME_PREFIXES = {"seed": "s", "width": "w", "depth": "d", "batch_size": "bs", "epochs": "e"}
# Already in the usual `{arch}-{flow}-{dataset}-{aug}` name.
NAMED_KEYS = ("arch", "flow", "dataset", "aug")
# A sweep sets these itself.
RESERVED_KEYS = ("run_name", "group")
# More points than any one sweep should hold (sweep status answers 10,000 in under a second);
# checked before a single point is built.
MAX_POINTS = 100_000


@dataclass
class Point:
    """One run of a grid: its name, full config, identity hash and the grid values it took."""

    name: str
    config: TrainingConfig
    config_hash: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Grid:
    path: Path
    group: str
    varied: list[str]  # the grid's keys, in file order
    points: list[Point]

    def point(self, name: str) -> Point:
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(name)


def load_grid(path: str | Path) -> Grid:
    """Read and expand a grid file; UsageError (one line, naming the key) on bad input."""
    path = Path(path)
    raw = load_yaml_file(path, what="grid")
    if not isinstance(raw, dict):
        raise UsageError(f"grid {path} must be a mapping with `base:` and `grid:`, "
                         f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} in grid {path}; valid keys: "
                         f"{', '.join(GRID_KEYS)}")
    group = str(raw.get("group") or path.stem)
    base = _base_config(raw.get("base"), path)
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise UsageError(f"`grid:` in {path} must map config keys to lists of values")
    for key, values in grid.items():
        _check_key(key, path, "grid")
        if not isinstance(values, list) or not values:
            raise UsageError(f"grid.{key} in {path} must be a non-empty list, e.g. "
                             f"{key}: [{values!r}]")
    includes = _point_list(raw.get("include"), path, "include")
    excludes = _point_list(raw.get("exclude"), path, "exclude")
    varied = list(grid)
    count = math.prod(len(values) for values in grid.values()) + len(includes)
    if count > MAX_POINTS:  # refuse before building a single point
        raise UsageError(f"grid {path} expands to {count:,} points, more than {MAX_POINTS:,}; "
                         "split it into several grids")
    combos = [dict(zip(varied, values, strict=True)) for values in itertools.product(*grid.values())]
    combos = [c for c in combos if not any(_matches(c, ex) for ex in excludes)]
    combos += includes
    template = raw.get("name")
    if template is not None and not isinstance(template, str):
        raise UsageError(f"`name:` in {path} must be a template string like \"{{name}}-s{{seed}}\"")
    points = [_make_point(base, values, varied, template, group, path) for values in combos]
    return Grid(path=path, group=group, varied=varied, points=_unique(points, path))


def _base_config(base: Any, grid_path: Path) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, str):  # a config file, relative to the grid file
        base_path = Path(base) if Path(base).is_absolute() else grid_path.parent / base
        base = load_yaml_file(base_path, what="base config") or {}
        if not isinstance(base, dict):
            raise UsageError(f"base config {base_path} must be a mapping of TrainingConfig keys")
    if not isinstance(base, dict):
        raise UsageError(f"`base:` in {grid_path} must be a mapping of TrainingConfig keys "
                         "or the path of a config file")
    for key in base:
        _check_key(key, grid_path, "base")
    return dict(base)


def _check_key(key: Any, path: Path, where: str) -> None:
    known = TrainingConfig().to_dict()
    if isinstance(key, str) and key.count(".") == 2 and key.split(".")[1] == "args" \
            and key.split(".")[0] in PLUGIN_KEYS:
        return  # one argument of the network or dataset (config_load.unfold_network)
    if key in RESERVED_KEYS:
        raise UsageError(f"{where}.{key} in {path}: a sweep sets {key} itself; use `name:` "
                         "for run names and `group:` for the group")
    if key not in known:
        raise UsageError(f"unknown key {key!r} in {where} of {path}; valid keys: "
                         f"{', '.join(sorted(k for k in known if k not in RESERVED_KEYS))}")


def _point_list(entries: Any, path: Path, where: str) -> list[dict[str, Any]]:
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f"`{where}:` in {path} must be a list of mappings, e.g. "
                         f"{where}: [{{flow: icfm, seed: 0}}]")
    for entry in entries:
        for key in entry:
            _check_key(key, path, where)
    return [dict(entry) for entry in entries]


def _matches(values: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(key in values and values[key] == wanted for key, wanted in pattern.items())


def default_template(varied: list[str]) -> str:
    """`{name}` (arch-flow-dataset-aug) plus `-{prefix}{value}` per other grid key."""
    extra = "".join(f"-{NAME_PREFIXES.get(key, key.rsplit('.', 1)[-1])}{{{_field(key)}}}"
                    for key in varied if key not in NAMED_KEYS)
    return "{name}" + extra


def _field(key: str) -> str:
    """A grid key as a name-template field: `network.args.channels` -> `network_args_channels`
    (format_map would read the dots as attribute access)."""
    return key.replace(".", "_")


def _make_point(base: dict[str, Any], values: dict[str, Any], varied: list[str],
                template: str | None, group: str, path: Path) -> Point:
    raw = {**base, **values, "group": group}
    where = f"grid {path} point {values}"
    config = config_from_dict(raw, source=where).validate()
    as_dict = config.to_dict()
    fields = {**as_dict, "name": config.name,
              **{_field(key): value for key, value in values.items()}}
    try:
        name = (template or default_template(varied)).format_map(fields)
    except (KeyError, IndexError, ValueError) as err:
        raise UsageError(f"`name:` template in {path} is not valid ({err}); use config keys "
                         "and {name}, e.g. \"{name}-s{seed}\"") from None
    config.run_name = name
    config.validate()  # the name must be one folder
    return Point(name=name, config=config, config_hash=config_hash({**as_dict, "run_name": name}),
                 values={key: raw[key] for key in values})


def _unique(points: list[Point], path: Path) -> list[Point]:
    """Drop exact duplicates (an include that repeats a grid point); refuse name clashes."""
    seen: dict[str, Point] = {}
    for point in points:
        other = seen.get(point.name)
        if other is None:
            seen[point.name] = point
        elif other.config_hash != point.config_hash:
            raise UsageError(f"points {other.values} and {point.values} of {path} would both "
                             f"be run {point.name}; add the key that tells them apart to "
                             "`name:`, e.g. name: \"{name}-lr{lr}\"")
    if not seen:
        raise UsageError(f"grid {path} has no points (check `grid:`, `include:` and `exclude:`)")
    return list(seen.values())
