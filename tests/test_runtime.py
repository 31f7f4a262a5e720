"""Where computation runs: how many CPU cores this process may use, the device and the precision."""

import os
from pathlib import Path

import pytest
import torch

from medddpm.errors import InputError
from medddpm.runtime import available_cores, resolve_device, resolve_precision


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


# Device and precision: what 'auto' picks, and the one-line refusals a user can act on.


@pytest.fixture
def cuda_present(monkeypatch):
    """A machine whose torch sees CUDA (devices are only named here, never used)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError) as e:
        resolve_device("cuda")
    assert str(e.value) == "--device cuda was asked for, but torch sees no CUDA device"


def test_resolve_device_with_cuda_takes_the_local_rank(cuda_present, monkeypatch):
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")  # asked for: kept
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun's fourth process on this node
    assert resolve_device("auto") == torch.device("cuda", 3)


@pytest.mark.parametrize(("name", "expected"), [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16")])
def test_resolve_precision_on_cpu(name: str, expected: str):
    assert resolve_precision(name, torch.device("cpu")) == expected


def test_fp16_is_refused_without_cuda():
    with pytest.raises(InputError) as e:
        resolve_precision("fp16", torch.device("cpu"))
    assert str(e.value) == "--precision fp16 needs a CUDA device; use fp32 (or bf16) on CPU"


@pytest.mark.parametrize(("bf16_supported", "auto"), [(True, "bf16"), (False, "fp32")])
def test_resolve_precision_on_cuda(bf16_supported: bool, auto: str, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    cuda = torch.device("cuda", 0)
    assert resolve_precision("auto", cuda) == auto  # bf16 only where the GPU has it (Ampere and later)
    assert resolve_precision("fp16", cuda) == "fp16"
    assert resolve_precision("fp32", cuda) == "fp32"


@pytest.mark.parametrize("command", ["train", "sample"])
def test_fp16_without_cuda_is_one_line_exit_2_and_writes_nothing(
    command: str, scan_dir: Path, tiny_run: Path, tmp_path: Path, capsys, monkeypatch
):
    from medddpm.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    args = {
        "train": ["train", str(scan_dir), "--config", "tiny"],
        "sample": ["sample", str(tiny_run), "--num", "1"],
    }[command]
    with pytest.raises(SystemExit) as e:
        main([*args, "--output", str(out), "--precision", "fp16"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "--precision fp16 needs a CUDA device" in err, err
    assert not out.exists()
