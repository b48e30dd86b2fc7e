"""Slurm: batch scripts that survive preemption, shared by `flowctl slurm submit` and sweeps.

`script.py` renders sbatch text (one run, or a job array of sweep points), `submit.py` hands
it to `sbatch`, and `requeue.py` is what a run does when the requeue signal arrives: save
(the trainer already did), then `scontrol requeue` its own job as its very last act. No torch.
"""
