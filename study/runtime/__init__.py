"""Where a process runs: its device, its rank among torchrun's processes, its share of the
cores. Imports nothing of flowctl but study.errors, so every package may use it."""
