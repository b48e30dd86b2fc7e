"""Sweeps: a grid of runs that finishes every point exactly once, whatever happens.

A grid file (`grid.py`) expands into points, each a full TrainingConfig with its own run
name and identity hash. Everything a sweep knows about a point lives in its run folder:
run.json (the trainer's), plus `sweep.yaml` (the point's config, what `flowctl train
--config ... --resume auto` reads), `sweep.json` (what the sweep saw of its attempts) and
`train.log` (the trainer's output) (`point_files.py`). `state.py` reads a point's state from
those files; `local.py` runs points as child processes; `commands.py` and `slurm_array.py`
hand them to another scheduler. No module here imports torch.
"""
