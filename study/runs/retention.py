"""Retention rules for `flowctl prune`: which run folders would go, and why. Selection only:
nothing here deletes (study.runs.removal does, under the run's lock). No torch import.

Rules combine with AND: a run goes when it matches every rule given.
- `statuses`: its display status is one of them (`crashed` and `unknown` included);
- `older_than_s`: run.json (else the folder) was last updated longer ago than that;
- `group`: it belongs to that group;
- `keep_best` K: it is not among the K best runs of `group` by `by` (lower is better:
  run.json's best val loss, or eval.json's W2). The ranking spans the whole group, whatever
  the other rules; a run without a score is never ranked, so never removed by this rule.
A folder without a readable run.json (`unknown`) goes only when `statuses` names `unknown`:
it may not be a run at all.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from study.errors import UsageError
from study.runs.display import format_age
from study.runs.paths import EVAL_JSON
from study.runs.safe_read import read_json_object
from study.runs.status import DISPLAY_STATUSES, RunInfo

RANK_BY = {"val_loss": "best val loss", "eval_w2": "eval W2"}
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """'30m', '12h', '7d', '2w', '90s' -> seconds. UsageError (one line) otherwise."""
    match = DURATION.match(text or "")
    if not match:
        raise UsageError(f"bad --older-than {text!r}; give a number and a unit: 30m, 12h, 7d "
                         "(units: s, m, h, d, w)")
    return float(match.group(1)) * DURATION_UNITS[match.group(2).lower()]


def parse_statuses(text: str) -> frozenset[str]:
    """'failed,crashed' -> {'failed', 'crashed'}; UsageError naming an unknown status."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - set(DISPLAY_STATUSES))
    if unknown or not wanted:
        shown = unknown[0] if unknown else text
        raise UsageError(f"unknown status {shown!r}; choose from: {', '.join(DISPLAY_STATUSES)}")
    return frozenset(wanted)


@dataclass(frozen=True)
class PruneRules:
    statuses: frozenset[str] | None = None
    older_than_s: float | None = None
    group: str | None = None
    keep_best: int | None = None
    by: str = "val_loss"

    def check(self) -> PruneRules:
        """UsageError for a rule set that names no rule or an impossible one."""
        if self.statuses is None and self.older_than_s is None and self.keep_best is None:
            raise UsageError("prune needs a rule: --status, --older-than or --keep-best K "
                             "--group G (e.g. flowctl prune --status failed,crashed)")
        if self.keep_best is not None and self.group is None:
            raise UsageError("--keep-best ranks the runs of one group; add --group G "
                             "(see the groups with `flowctl list-runs`)")
        if self.keep_best is not None and self.keep_best < 0:
            raise UsageError(f"--keep-best must be 0 or more, got {self.keep_best}")
        if not is_rank_key(self.by):
            raise UsageError(f"unknown --by {self.by!r}; choose from: {', '.join(RANK_BY)}, "
                             "or eval_NAME for any number in eval.json (a user metric)")
        return self


@dataclass
class Selected:
    """A run that matches every rule; `reasons` says which rule matched how."""

    run: RunInfo
    reasons: list[str] = field(default_factory=list)


@dataclass
class PrunePlan:
    remove: list[Selected]
    unranked: list[RunInfo]  # --keep-best: runs of the group without a score (kept)
    links: list[RunInfo] = field(default_factory=list)  # symlinks the rules matched (kept)


def folder_key(run: RunInfo) -> str:
    """What prune ranks, deletes and reports by: the folder, never the run name (a backup
    copy of a run folder holds the same run name)."""
    return str(run.path)


def folder_label(run: RunInfo) -> str:
    """The folder's name, and the run name inside it when that differs."""
    name = os.path.basename(run.path)
    return name if run.run_name == name else f"{name} (run {run.run_name})"


def is_rank_key(by: str) -> bool:
    """val_loss, or eval_NAME: a number in eval.json (W2, MMD, ..., a user metric's name)."""
    return by in RANK_BY or re.fullmatch(r"eval_[A-Za-z_]\w*", by) is not None


def run_score(run: RunInfo, by: str) -> float | None:
    """A run's score for ranking (lower is better): `val_loss` is its best validation loss,
    `eval_X` the value X in its eval.json (eval_w2, eval_mmd, ...); None if it has none."""
    if by == "val_loss":
        value = run.best_val_loss
    else:
        value = (read_json_object(os.path.join(run.path, EVAL_JSON)) or {}).get(
            by.removeprefix("eval_"))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def select_runs(runs: list[RunInfo], rules: PruneRules, *, now: float,
                scores: dict[str, float | None] | None = None) -> PrunePlan:
    """The run folders `rules` remove, in the order given. `scores`: folder_key -> run_score
    (needed with keep_best; computed here from `runs` when not given).

    A folder that is a symlink is never removed nor ranked (the folder it names is, under
    its own name); when the rules match it, it is listed in `links`."""
    rank_note: dict[str, str] = {}
    unranked: list[RunInfo] = []
    if rules.keep_best is not None:
        group = [run for run in runs if run.group == rules.group
                 and run.display_status != "unknown" and run.link is None]
        if scores is None:
            scores = {folder_key(run): run_score(run, rules.by) for run in group}
        ranked = sorted((run for run in group if scores.get(folder_key(run)) is not None),
                        key=lambda run: (scores[folder_key(run)], run.run_name, folder_key(run)))
        unranked = [run for run in group if scores.get(folder_key(run)) is None]
        for rank, run in enumerate(ranked[rules.keep_best:], start=rules.keep_best + 1):
            rank_note[folder_key(run)] = (f"{RANK_BY.get(rules.by, rules.by)} {scores[folder_key(run)]:.4g} "
                                          f"ranks {rank} of {len(ranked)} in group {rules.group}")
    remove, links = [], []
    for run in runs:
        reasons = _reasons(run, rules, now, rank_note)
        if reasons is not None and run.link is not None:
            links.append(run)
        elif reasons is not None:
            remove.append(Selected(run, reasons))
    return PrunePlan(remove, unranked, links)


def _reasons(run: RunInfo, rules: PruneRules, now: float, rank_note: dict[str, str]) -> list[str] | None:
    """Why `run` goes, one phrase per rule; None as soon as one rule keeps it."""
    reasons = []
    if rules.statuses is not None:
        if run.display_status not in rules.statuses:
            return None
        reasons.append(f"status {run.display_status}")
    elif run.display_status == "unknown":
        return None
    if rules.group is not None and run.group != rules.group:
        return None
    if rules.older_than_s is not None:
        age = now - run.sort_time
        if age <= rules.older_than_s:
            return None
        reasons.append(f"updated {format_age(age)} ago")
    if rules.keep_best is not None and run.link is None:
        if folder_key(run) not in rank_note:
            return None
        reasons.append(rank_note[folder_key(run)])
    return reasons
