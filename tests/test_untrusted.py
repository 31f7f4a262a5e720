"""Untrusted files: nothing unpickles a file a user hands in.

Every test plants a pickle whose unpickling would create a marker file, hands it to the command
line wherever a checkpoint, weights or cache file is read, and checks that the marker never appears:
weights come from safetensors, training_state.pt and MONAI's disk cache load with weights_only=True.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from medddpm.errors import InputError
from tests.test_reliability import (
    assert_one_line_error,
    one_thread,  # noqa: F401  (an autouse fixture: active here too)
    run_cli,
    snapshot,
)


class Plant:
    """Unpickling this runs ``open(marker, 'w')``: what a hostile checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def hostile_torch_file(path: Path, marker: Path) -> Path:
    """A torch zip file shaped like a training state, with the plant inside."""
    torch.save({"step": 2, "optimizer": Plant(marker), "weight": torch.zeros(3)}, path)
    return path


def hostile_pickle(path: Path, marker: Path) -> Path:
    """A bare (legacy-format) pickle, as old .pth files are."""
    path.write_bytes(pickle.dumps({"state_dict": Plant(marker)}, protocol=2))
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def test_the_plant_is_real(tmp_path: Path, marker: Path):
    """The crafted files do run code when unpickled the unsafe way (so the tests below mean something)."""
    torch.load(hostile_torch_file(tmp_path / "a.pt", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(hostile_pickle(tmp_path / "b.pth", marker).read_bytes())
    assert marker.exists()


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_resume_refuses_hostile_training_state(run_copy: Path, tiny_run: Path, marker: Path, capsys):
    hostile_torch_file(run_copy / "checkpoints" / "step-00000002" / "training_state.pt", marker)
    before = snapshot(run_copy)
    code, _, err = run_cli(["train", tiny_run.parent / "scans", "--output", run_copy, "--resume"], capsys)
    assert_one_line_error(
        code, err, "training_state.pt", "refused to load the training state", "not unpickled"
    )
    assert not marker.exists() and snapshot(run_copy) == before


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors"])
def test_resume_refuses_pickled_weights(name: str, run_copy: Path, tiny_run: Path, marker: Path, capsys):
    hostile_torch_file(run_copy / "checkpoints" / "step-00000002" / name, marker)
    code, _, err = run_cli(["train", tiny_run.parent / "scans", "--output", run_copy, "--resume"], capsys)
    assert_one_line_error(code, err, name, "corrupt or unreadable weights")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_sample_refuses_a_weights_file_as_checkpoint(
    suffix: str, tiny_run: Path, tmp_path: Path, marker: Path, capsys
):
    hostile = hostile_pickle(tmp_path / f"model{suffix}", marker)
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["sample", tiny_run, "--output", out, "--num", "1", "--checkpoint", hostile], capsys
    )
    assert_one_line_error(code, err, str(hostile), "single weight files are not accepted")
    assert not marker.exists() and not out.exists()
    code, _, err = run_cli(["sample", hostile, "--output", out, "--num", "1"], capsys)
    assert_one_line_error(code, err, str(hostile), "not a folder")
    assert not marker.exists() and not out.exists()


def test_sample_never_reads_training_state(run_copy: Path, tmp_path: Path, marker: Path, capsys):
    """Sampling needs only the safetensors weights and meta.json: a hostile training_state.pt in the
    checkpoint folder is never opened."""
    checkpoint = run_copy / "checkpoints" / "step-00000002"
    hostile_torch_file(checkpoint / "training_state.pt", marker)
    code, _, err = run_cli(
        ["sample", run_copy, "--output", tmp_path / "out", "--num", "1", "--checkpoint", checkpoint], capsys
    )
    assert code == 0, err
    assert not marker.exists() and (tmp_path / "out" / "sample_0000.nii.gz").is_file()


def test_sample_refuses_pickled_ema_weights(run_copy: Path, tmp_path: Path, marker: Path, capsys):
    checkpoint = run_copy / "checkpoints" / "step-00000002"
    hostile_torch_file(checkpoint / "ema.safetensors", marker)
    out = tmp_path / "out"
    code, _, err = run_cli(["sample", checkpoint, "--output", out, "--num", "1"], capsys)
    assert_one_line_error(code, err, "ema.safetensors", "corrupt or unreadable weights")
    assert not marker.exists() and not out.exists()


def test_disk_cache_is_never_unpickled(tmp_path: Path, tiny_run: Path, marker: Path, capsys):
    """data.cache=disk: MONAI's PersistentDataset loads with weights_only=True, so a hostile file in
    RUN_DIR/cache is refused (MONAI then recomputes the item) and training goes on."""
    scans, run = tiny_run.parent / "scans", tmp_path / "run"
    disk = ["--config", "tiny", "--set", "data.cache=disk"]
    # 2 steps of batch 2 read (and cache) each of the 4 scans once; so do steps 3 and 4.
    code, _, err = run_cli(["train", scans, "--output", run, *disk, "--max-steps", "2"], capsys)
    assert code == 0, err
    cached = sorted((run / "cache").glob("*.pt"))
    assert len(cached) == 4
    for path in cached:
        hostile_torch_file(path, marker)
    with pytest.warns(UserWarning, match="Corrupt cache file"):
        code, _, err = run_cli(["train", scans, "--output", run, "--resume", "--max-steps", "4"], capsys)
    assert code == 0, err
    assert not marker.exists()
    assert all(torch.load(p, weights_only=True)["image"].shape == (1, 16, 16, 16) for p in cached)


@pytest.mark.parametrize("make", [hostile_pickle, hostile_torch_file], ids=["legacy pickle", "torch zip"])
def test_feature_weights_are_never_unpickled(make, tmp_path: Path, marker: Path):
    """What ``medddpm evaluate --feature-weights`` reads (MedicalNet .pth files are pickles)."""
    from medddpm.evaluation.features import build_resnet, load_medicalnet_weights

    hostile = make(tmp_path / "resnet_10.pth", marker)
    with pytest.raises(InputError, match="refused to load feature-network weights"):
        load_medicalnet_weights(build_resnet("resnet10"), hostile)
    assert not marker.exists()


@pytest.mark.parametrize("make", [hostile_pickle, hostile_torch_file], ids=["legacy pickle", "torch zip"])
def test_evaluate_refuses_hostile_feature_weights(make, tmp_path: Path, marker: Path, capsys):
    import numpy as np

    from tests.conftest import blob_volume, write_nifti

    rng = np.random.default_rng(0)
    for i in range(2):
        write_nifti(tmp_path / "real" / f"r{i}.nii.gz", blob_volume(rng, (16, 16, 16)))
    hostile = make(tmp_path / "resnet_10_23dataset.pth", marker)
    report = tmp_path / "report"
    args = [
        "evaluate",
        tmp_path / "real",
        tmp_path / "real",
        "--output",
        report,
        "--feature-weights",
        hostile,
    ]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, str(hostile), "refused to load feature-network weights")
    assert not marker.exists() and not report.exists()
