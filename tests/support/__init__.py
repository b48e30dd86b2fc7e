"""Code the tests share, and nothing else: test modules import from here, never from each
other or from scripts/.

- helpers: tiny datasets and flags, the CLI in-process and as a real child process, the
  dashboard server, checkpoint and metrics readers, wandb records;
- real_services: the pytest plugin for tests that need a browser or a running Slurm;
- zygote, zygote_fixtures, kill_loop: real `flowctl` processes forked in milliseconds, their
  `zygote` and `flowctl` fixtures (tests/faults, the signal tests of test_resume, test_registry
  and test_mlflow), and the SIGKILL / resume loop (also scripts/fault_soak.py);
- distributed_runs: the 1- and 2-process reference runs test_distributed and test_multinode
  compare against;
- trained_run: the one finished run a test session trains once for its read-only tests;
- fake_runs, checkpoints, trainers, trackers, import_check, attacks: run folders written by
  hand, hand-made and hostile checkpoints, an in-process FlowTrainer, MLflow read-back, the
  "imports no torch" check, and file fingerprints for the attack tests;
- hooks/sitecustomize.py: a start-up hook for real processes (tests/test_distributed.py).
"""
