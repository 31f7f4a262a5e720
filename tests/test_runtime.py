"""Where computation runs: how many CPU cores this process may use."""

import os

import pytest

from medddpm.runtime import available_cores


def test_available_cores_follow_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert available_cores() == 3  # taskset, a container or a scheduler gave this process 3 of 64


def test_available_cores_without_affinity_masks(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert available_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown
    assert available_cores() == 1


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity masks here")
def test_available_cores_on_this_machine():
    assert available_cores() == len(os.sched_getaffinity(0)) >= 1
