"""`flowctl prune`: remove run folders by rule, after showing what would go.

Rules and their meaning: study.runs.retention; deleting under the run lock:
study.runs.removal. Imports neither torch nor wandb.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from study.cli.common import EXIT_FAILED, CkptDir, fail, user_errors
from study.runs.display import format_size
from study.runs.paths import checkpoint_root
from study.runs.retention import (
    RANK_BY,
    PrunePlan,
    PruneRules,
    folder_key,
    folder_label,
    parse_duration,
    parse_statuses,
    select_runs,
)
from study.runs.status import DISPLAY_STATUSES, scan_runs


def prune(
    status: str | None = typer.Option(None, "--status", help=f"Runs with this status (comma-separated): {', '.join(DISPLAY_STATUSES)}."),
    older_than: str | None = typer.Option(None, "--older-than", help="Runs last updated longer ago than this: 30m, 12h, 7d, 2w."),
    keep_best: int | None = typer.Option(None, "--keep-best", help="All but the K best runs of --group (runs without a score are kept)."),
    group: str | None = typer.Option(None, "--group", help="Only runs of this group; the group --keep-best ranks."),
    by: str = typer.Option("val_loss", "--by", help=f"What --keep-best ranks by, lower is better: {' | '.join(RANK_BY)} (eval.json's W2)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would go (the default unless --yes or a terminal confirmation)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object, for scripts (never asks)."),
    ckpt_dir: CkptDir = None,
) -> None:
    """Remove run folders by rule: lists what would go and the space it frees; --yes (or a yes at the terminal prompt) deletes.

    Rules combine with AND. A run whose trainer is alive is never removed: prune takes the run's lock before deleting and skips a run whose lock is held.

    Example: flowctl prune --status failed,crashed --older-than 7d

    Example: flowctl prune --keep-best 3 --group ablation --by eval_w2 --yes
    """
    if yes and dry_run:
        raise fail("--yes deletes and --dry-run only lists; give one of them")
    with user_errors():
        rules = PruneRules(statuses=parse_statuses(status) if status is not None else None,
                           older_than_s=parse_duration(older_than) if older_than is not None else None,
                           group=group, keep_best=keep_best, by=by).check()
        root = checkpoint_root(ckpt_dir)
        runs = scan_runs(root)
    plan = select_runs(runs, rules, now=time.time())
    interactive = not (yes or dry_run or json_output) and sys.stdin.isatty() and sys.stdout.isatty()
    if interactive and plan.remove:  # list, ask, then delete what was listed
        _print_report(plan, root, len(runs), {}, deleted=False, hint=False)
        if not typer.confirm(f"delete {folders(len(plan.remove))}?", default=False):
            typer.echo("nothing deleted")
            return
        yes = True
    outcomes = _delete(plan) if yes else {}
    if json_output:
        typer.echo(json.dumps(_json_report(plan, root, outcomes, deleted=yes), indent=2))
    else:
        _print_report(plan, root, len(runs), outcomes, deleted=yes)
    if any(outcome.action == "failed" for outcome in outcomes.values()):
        raise typer.Exit(EXIT_FAILED)


LINK_NOTE = "a symlink to {target}; prune never follows links (remove the link itself with rm)"


def folders(count: int) -> str:
    return f"{count} run folder" + ("" if count == 1 else "s")


def _delete(plan: PrunePlan) -> dict[str, Any]:
    from study.runs.removal import remove_run

    return {folder_key(selected.run): remove_run(selected.run) for selected in plan.remove}


def _print_report(plan: PrunePlan, root: Path, checked: int, outcomes: dict[str, Any], *,
                  deleted: bool, hint: bool = True) -> None:
    if not plan.remove:
        typer.echo(f"nothing to prune under {root} ({checked} runs checked)")
    width = max((len(folder_label(s.run)) for s in plan.remove), default=0)
    for selected in plan.remove:
        run = selected.run
        outcome = outcomes.get(folder_key(run))
        action = outcome.action if outcome else "would remove"
        line = (f"{action:<12}  {folder_label(run):<{width}}  {format_size(run.size_bytes):>8}  "
                f"{'; '.join(selected.reasons)}")
        if outcome is not None and outcome.note:
            line += f"  ({outcome.note})"
        typer.echo(line)
    for run in plan.unranked:
        typer.echo(f"{'kept':<12}  {folder_label(run)}: no score to rank it by")
    for run in plan.links:
        typer.echo(f"{'kept':<12}  {folder_label(run)}: {LINK_NOTE.format(target=run.link)}")
    if not plan.remove:
        return
    if deleted:
        freed = sum(outcome.freed_bytes for outcome in outcomes.values())
        removed = sum(outcome.action == "removed" for outcome in outcomes.values())
        others = len(outcomes) - removed
        typer.echo(f"freed {format_size(freed)}: {folders(removed)} removed"
                   + (f", {others} left (see above)" if others else ""))
    else:
        total = sum(selected.run.size_bytes for selected in plan.remove)
        typer.echo(f"would free {format_size(total)} ({folders(len(plan.remove))})"
                   + ("; run again with --yes to delete them" if hint else ""))


def _json_report(plan: PrunePlan, root: Path, outcomes: dict[str, Any], *,
                 deleted: bool) -> dict[str, Any]:
    rows = []
    for selected in plan.remove:
        run, outcome = selected.run, outcomes.get(folder_key(selected.run))
        rows.append({"run_name": run.run_name, "folder": run.path.name, "path": str(run.path),
                     "status": run.display_status, "group": run.group,
                     "size_bytes": run.size_bytes, "reasons": selected.reasons,
                     "action": outcome.action if outcome else "would_remove",
                     "freed_bytes": outcome.freed_bytes if outcome else 0,
                     "note": outcome.note if outcome else None})
    return {"root": str(root), "dry_run": not deleted, "runs": rows,
            "kept_unranked": [run.run_name for run in plan.unranked],
            "kept_links": [{"folder": run.path.name, "path": str(run.path), "link": run.link}
                           for run in plan.links],
            "would_free_bytes": sum(s.run.size_bytes for s in plan.remove),
            "freed_bytes": sum(row["freed_bytes"] for row in rows)}
