"""What makes two configs the same run: every key except the harmless ones.

`flowctl train --resume auto` lets the harmless keys (HARMLESS_OVERRIDES: epochs, patience,
log_every, save_every, group, ...) differ from the checkpoint (they win with a line); every
other key must match. A sweep point's
identity is the same: its run name plus a hash of the other keys, so changing `epochs` in a
grid extends its runs, and changing `lr` under the same run name is refused. No torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from study.flow_matching.config import TrainingConfig, resolved_network
from study.flow_matching.config_load import LEGACY_DEFAULTS
from study.flow_matching.resume import HARMLESS_OVERRIDES

# Not part of identity: the harmless keys, and the name (identity's other half).
# network_sha256 is recorded when a run starts (a changed file is a warning, not a new run).
NOT_IDENTITY = (*HARMLESS_OVERRIDES, "run_name", "network_sha256")
_DEFAULTS = TrainingConfig().to_dict()


def identity_dict(config: dict[str, Any]) -> dict[str, Any]:
    """The keys that define a run, with defaults filled in and `network` resolved the way
    launch.assign_network resolves it (run.json stores the resolved value)."""
    merged = {**_DEFAULTS, **config}
    merged["network"] = resolved_network(merged.get("network"), merged.get("arch"))
    merged["stages"] = [_plain_stage(stage) for stage in merged.get("stages") or []]
    return {key: merged[key] for key in sorted(merged) if key in _DEFAULTS
            and key not in NOT_IDENTITY}


def _plain_stage(stage: Any) -> dict[str, Any]:
    return dataclasses.asdict(stage) if dataclasses.is_dataclass(stage) else dict(stage)


def config_hash(config: dict[str, Any]) -> str:
    """12 hex digits of sha256 over the identity keys (stable across Python versions)."""
    text = json.dumps(identity_dict(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def identity_diff(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """`key: stored vs wanted` for each identity key that differs ([]: the same run)."""
    # A run written before some keys existed was trained with their legacy behaviour.
    have, want = identity_dict({**LEGACY_DEFAULTS, **stored}), identity_dict(wanted)
    return [f"{key}: {have[key]!r} in the run, {want[key]!r} in the grid"
            for key in want if have.get(key) != want[key]]
