"""The exit code `flowctl train --nproc` leaves with, from torchrun's exit, rank 0's recorded
code and torchrun's failure report (its real format, as torch 2.13 prints it). The real
processes behind each case are in tests/test_distributed.py."""

from __future__ import annotations

import signal

import pytest

from study.cli.torchrun import exit_code_of

REPORT = """Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
study.cli.app FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-06_00:05:46
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : {rank0} (pid: 28859)
  error_file: <N/A>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-06_00:05:46
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : {rank1} (pid: 28860)
  error_file: <N/A>
============================================================
"""


def report(rank0: int, rank1: int) -> list[str]:
    return REPORT.format(rank0=rank0, rank1=rank1).splitlines(keepends=True)


@pytest.mark.parametrize(("recorded", "rank0", "rank1", "received", "expected", "names_rank1"), [
    (None, -15, -9, [], 1, True),     # rank 1 killed, rank 0 killed before it recorded
    ("143", 143, -9, [], 1, True),    # rank 1 killed, the agent stopped rank 0: not a stop
    ("1", 1, -9, [], 1, True),        # rank 1 killed, rank 0's collective failed
    ("1", 1, 1, [], 1, False),        # both failed alike: rank 0's own line says why
    ("2", 2, 2, [], 2, False),        # bad input on every rank: still exit 2
    ("143", 143, 143, [], 143, False),  # both stopped (a scheduler's SIGTERM to the job)
    ("143", 143, -6, [signal.SIGTERM], 143, False),  # flowctl was asked to stop: a stop
    (None, -15, 143, [signal.SIGTERM], 143, False),  # stopped, rank 0 killed before recording
])
def test_exit_code(tmp_path, capsys, recorded, rank0, rank1, received, expected, names_rank1):
    exit_file = tmp_path / "rank0"
    if recorded is not None:
        exit_file.write_text(recorded)
    assert exit_code_of(1, exit_file, received, report(rank0, rank1)) == expected
    said = capsys.readouterr().err
    assert said == ("error: rank 1 failed (killed by SIGKILL), which ended the run; "
                    "FLOWCTL_DEBUG=1 shows every rank's output\n" if names_rank1 else ""), said


def test_a_finished_run_is_0_whatever_was_recorded(tmp_path):
    assert exit_code_of(0, tmp_path / "missing", [], []) == 0
