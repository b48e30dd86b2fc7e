"""Everything under {checkpoint root}/{run}/: paths, checkpoint files, run.json, metrics.csv,
the run lock and the trackers (wandb, TensorBoard). No training code, and no torch import
until a checkpoint is read or written."""
