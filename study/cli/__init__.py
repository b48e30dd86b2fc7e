"""The `flowctl` command line: one module per command, wired lazily by app.py; common.py
holds the shared options and the one-line error handling, torchrun.py the --nproc launcher."""
