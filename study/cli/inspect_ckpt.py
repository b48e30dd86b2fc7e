"""`flowctl inspect-ckpt`: what a checkpoint holds, without running any of it.

The file is read by study.runs.checkpoint_reader (via checkpoint_summary): the pickle inside the zip, with a restricted
unpickler that builds only primitives and tensor descriptors, so neither torch nor any
tensor's bytes are loaded (a multi-GB checkpoint answers in a fraction of a second, the
sha256 of a big file coming from a cache after the first time). `--stats` loads the tensors
with torch (weights_only, memory-mapped) to add min/max/mean/std per model tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from study.cli.common import Last, resolve_checkpoint, user_errors
from study.runs.display import printable_tree


def inspect_ckpt(
    target: str = typer.Argument(..., help="A checkpoint file, a run folder, or a run name."),
    last: Last = False,
    tensors: bool = typer.Option(True, "--tensors/--no-tensors", help="List the model's tensors."),
    stats: bool = typer.Option(False, "--stats", help="Add min, max, mean, std and the number of "
                               "non-finite values per model tensor (loads the tensors with torch)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object, for scripts."),
    ckpt_dir: Path | None = typer.Option(
        None, "--ckpt-dir", help="Checkpoint root for run names (default: $FLOWCTL_CKPT_DIR, else study/checkpoints)."
    ),
) -> None:
    """Show what a checkpoint holds: epoch, step, config, tensors, optimizer, RNG states.

    TARGET is a .pt file, a run folder or a run name under the checkpoint root: its best.pt, else its last.pt.

    Reads the file without importing torch; `--stats` loads the tensors to summarise them.

    Example: flowctl inspect-ckpt mlp-icfm-moons-none --last --no-tensors
    """
    from study.runs.checkpoint_summary import (
        load_checkpoint_info,
        sha256_in_background,
        summarize_checkpoint,
    )

    with user_errors():
        path = resolve_checkpoint(target, ckpt_dir, last=last)
        sha256 = sha256_in_background(path)
        ckpt = load_checkpoint_info(path)
        summary = summarize_checkpoint(path, ckpt, sha256=sha256())
        if stats and tensors:
            add_tensor_statistics(path, summary["tensors"])
    if not tensors:
        summary.pop("tensors")
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
        return
    _render(printable_tree(summary))  # text from the file: no terminal escapes


def add_tensor_statistics(path: Path, tensors: list[dict[str, Any]]) -> None:
    """Add a "stats" dict to each entry of the summary's tensor list (imports torch)."""
    from study.runs.checkpoint import read_checkpoint
    from study.runs.checkpoint_summary import tensor_statistics

    model_state = read_checkpoint(path)["model_state_dict"]
    for entry in tensors:
        entry["stats"] = tensor_statistics(model_state[entry["name"]])


def _render(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from study.runs.display import format_size

    console = Console()
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column(overflow="fold")
    stage = summary["stage"]
    stage_text = (f"{stage.get('stage_name', '-')} ({stage.get('current_stage', '-')})"
                  if isinstance(stage, dict) else _text(stage))
    epoch = summary["epoch"]
    epoch_text = f"{epoch} ({summary['epochs_completed']} completed)" if isinstance(epoch, int) else "-"
    version = summary["format_version"]
    for label, value in (
        ("file", summary["path"]),
        ("size", f"{format_size(summary['size_bytes'])} ({summary['size_bytes']} bytes)"),
        ("sha256", summary["sha256"]),
        ("format", f"v{version}" if version is not None else "- (original study format)"),
        ("epoch", epoch_text),
        ("step", _text(summary["global_step"])),
        ("stage", stage_text),
        ("best loss", _text(summary["best_loss"])),
        ("parameters", f"{summary['parameter_count']:,}" + (" (+ EMA copy)" if summary["ema"] else "")),
        ("saved at", _text(summary["saved_at"]) + (f" on {summary['host']}" if summary["host"] else "")),
    ):
        header.add_row(label, Text(value))
    console.print(Panel(header, title="checkpoint", title_align="left", expand=False))

    config = summary["config"]
    if isinstance(config, dict) and config:
        table = Table(title="config", title_justify="left", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in config.items():
            table.add_row(key, Text(_text(value)))
        console.print(table)

    if "tensors" in summary:
        table = Table(title="model tensors", title_justify="left")
        table.add_column("name")
        table.add_column("shape", justify="right")
        table.add_column("dtype")
        stat_names = ("min", "max", "mean", "std", "nonfinite")
        with_stats = any("stats" in tensor for tensor in summary["tensors"])
        for name in stat_names if with_stats else ():
            table.add_column(name, justify="right")
        for tensor in summary["tensors"]:
            shape = "x".join(map(str, tensor["shape"])) or "scalar"
            values = [_text(tensor.get("stats", {}).get(name)) for name in stat_names]
            table.add_row(Text(tensor["name"]), shape, tensor["dtype"], *(values if with_stats else ()))
        console.print(table)

    for label, value in _detail_lines(summary):
        console.print(f"[bold]{label:<14}[/bold] {value}", highlight=False, markup=True)


def _detail_lines(summary: dict[str, Any]) -> list[tuple[str, str]]:
    from rich.markup import escape

    lines = []
    optimizer = summary["optimizer"]
    if optimizer:
        group = optimizer["param_groups"][0] if optimizer["param_groups"] else {}
        extras = "  ".join(f"{key} {_text(group[key])}" for key in ("betas", "weight_decay") if key in group)
        lines.append(("optimizer", f"{_text(optimizer['type'])}  lr {_text(optimizer['lr'])}  "
                                   f"step {_text(optimizer['step'])}  {extras}".rstrip()))
    else:
        lines.append(("optimizer", "-"))
    scheduler = summary["scheduler"]
    lines.append(("scheduler", f"last_epoch {_text(scheduler['last_epoch'])}  last_lr {_text(scheduler['last_lr'])}"
                  if scheduler else "-"))
    stats = summary["normalization_stats"]
    if stats:
        mean, std = (_first_values(stats[key], stats["dim"]) for key in ("mean", "std"))
        lines.append(("normalization", f"dim {_text(stats['dim'])}  mean {mean}  std {std}"))
    else:
        lines.append(("normalization", "-"))
    lines.append(("rng states", ", ".join(summary["rng_states"]) if summary["rng_states"] else "-"))
    project = f" (project {summary['wandb_project']})" if summary["wandb_project"] else ""
    lines.append(("wandb", f"{_text(summary['wandb_run_id'])}{project}"))
    install = f" ({_text(summary['flowctl_install'])})" if summary["flowctl_install"] else ""
    lines.append(("versions", f"torch {_text(summary['torch_version'])}  "
                              f"flowctl {_text(summary['flowctl_version'])}{install}"))
    lines.append(("dataset", f"checksum {_text(summary['dataset_checksum'])}"))
    return [(label, escape(value)) for label, value in lines]


def _first_values(values: Any, dim: Any) -> str:
    """The summary's first few stats values, with "..." when the vector is longer."""
    if not isinstance(values, list):
        return _text(values)
    more = [...] if isinstance(dim, int) and dim > len(values) else []
    return "[" + ", ".join("..." if v is ... else _text(v) for v in values + more) + "]"


def _text(value: Any) -> str:
    """A summary value for a person: None -> "-", floats short, containers as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)
