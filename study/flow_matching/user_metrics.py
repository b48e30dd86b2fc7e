"""A user's own sample metric (`--eval-fn pkg.module:function`, `eval_fn:` in YAML).

The function is called as `function(samples, data, config)`: samples [n, D] from the EMA
weights and n held-out rows [n, D], both CPU float tensors in data units, and the run's
config as a plain dict. It returns `{name: number}`; each is logged as `eval/{name}` beside
W2 and MMD during training (`--eval-every`), and by `flowctl eval` into eval.json. The
target is resolved by study.plugins (a plain function, nothing else is called).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from study.errors import UsageError

# eval.json's own keys: a user metric may not shadow them.
RESERVED_NAMES = ("w2", "mmd", "w2_floor", "mmd_floor", "nfe", "path_energy", "npe",
                  "straightness", "n", "solver", "steps", "seed", "seeds", "draws", "per_draw",
                  "run", "checkpoint", "data", "evaluated_at", "compared_with")
NAME_PATTERN = re.compile(r"[A-Za-z_][\w]*")

UserMetric = Callable[[Any, Any], dict[str, float]]


def user_metric(config: Mapping[str, Any] | Any) -> UserMetric | None:
    """`metric(samples, data) -> {name: float}` for a config's eval_fn (a TrainingConfig or
    a checkpoint's config dict), the config bound; None without one. UsageError when the
    target is not an importable plain function."""
    from study.plugins import resolve_target

    values = config if isinstance(config, Mapping) else config.to_dict()
    target = values.get("eval_fn")
    if not target:
        return None
    function = resolve_target(target, kind="function", what="eval_fn")
    plain = dict(values)

    def metric(samples, data) -> dict[str, float]:
        try:
            result = function(samples, data, plain)
        except Exception as err:  # the user's code: name it, one line
            raise UsageError(f"eval_fn {target} raised {type(err).__name__}: "
                             f"{' '.join(str(err).split())}") from None
        return check_result(result, target)

    return metric


def check_result(result: Any, target: str) -> dict[str, float]:
    """{name: float}, or UsageError naming what is wrong with the function's answer."""
    if not isinstance(result, Mapping):
        raise UsageError(f"eval_fn {target} returned {type(result).__name__}; expected a dict "
                         "{name: number}")
    checked = {}
    for name, value in result.items():
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in RESERVED_NAMES:
            raise UsageError(f"eval_fn {target} returned the name {name!r}; use letters, digits "
                             f"and _ and none of: {', '.join(RESERVED_NAMES)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # a 0-dim tensor or numpy number
            except (TypeError, ValueError):
                raise UsageError(f"eval_fn {target} returned {name}={value!r}; expected a "
                                 "number") from None
        checked[name] = float(value) if math.isfinite(float(value)) else float("inf")
    return checked
