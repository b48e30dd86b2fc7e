"""Device and CPU threads: small models train on one intra-op thread unless told otherwise."""

from __future__ import annotations

import pytest
import torch

from study.errors import UsageError
from study.runtime.cores import SMALL_MODEL_PARAMETERS, set_cpu_threads


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_small_model_on_cpu_gets_one_thread(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert set_cpu_threads(torch.device("cpu"), SMALL_MODEL_PARAMETERS - 1, None) == 1


def test_large_model_keeps_torchs_default(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert set_cpu_threads(torch.device("cpu"), SMALL_MODEL_PARAMETERS, None) == 2


def test_omp_num_threads_and_the_flag_win(monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert set_cpu_threads(torch.device("cpu"), 10, None) == 2
    assert set_cpu_threads(torch.device("cpu"), 10, 1) == 1


def test_bad_thread_count_is_a_usage_error():
    with pytest.raises(UsageError, match="--threads must be >= 1"):
        set_cpu_threads(torch.device("cpu"), 10, 0)


def test_default_pairing_workers_use_this_process_share_of_the_cores(monkeypatch):
    from study.flow_matching.config import TrainingConfig
    from study.flow_matching.launch import pairing_workers

    otcfm, icfm = TrainingConfig(flow="otcfm"), TrainingConfig(flow="icfm")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("FLOWCTL_CPU_SHARE", raising=False)
    assert pairing_workers(otcfm, None) == 4, "the spare cores, at most 4"
    monkeypatch.setenv("FLOWCTL_CPU_SHARE", "3")  # a sweep point's share of the 16
    assert pairing_workers(otcfm, None) == 2
    monkeypatch.setenv("FLOWCTL_CPU_SHARE", "1")
    assert pairing_workers(otcfm, None) == 1
    assert pairing_workers(icfm, None) == 0 and pairing_workers(otcfm, 3) == 3
