"""Bad input through the command line: exit code 2, one line naming the file and the reason, no
traceback (unless --debug), and nothing written or overwritten.

Each case builds the bad thing on the fly (tiny volumes), runs ``medddpm.cli.main`` and compares
the folders it could have touched before and after.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import pathlib
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medddpm.cli import main
from medddpm.config import DataConfig, build_config
from medddpm.data.nifti import read_scan
from medddpm.data.transforms import build_transforms
from medddpm.errors import InputError
from medddpm.models.unet import build_unet
from medddpm.runtime import torch_threads
from tests.conftest import blob_volume, write_nifti

SHAPE = (10, 9, 11)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny volumes gain nothing from threads, and on a busy machine OpenMP spin-waits cost a lot."""
    with torch_threads(1):
        yield


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folders``: path -> (size, mtime in ns). Missing folders give nothing."""
    found = {}
    for folder in folders:
        if folder.is_file():
            found[str(folder)] = (folder.stat().st_size, folder.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
            found[str(p)] = (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
    return found


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit 2 and exactly one stderr line, 'error: ...', holding every needle; returns the line."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def set_scaling(path: Path, slope: float, inter: float) -> Path:
    """Overwrite scl_slope / scl_inter in the file itself (nibabel resets them when saving)."""
    raw = path.read_bytes()
    gz = path.name.endswith(".gz")
    header = bytearray(gzip.decompress(raw) if gz else raw)
    header[112:120] = struct.pack("<ff", slope, inter)  # NIfTI-1: float32 scl_slope, scl_inter
    path.write_bytes(gzip.compress(bytes(header)) if gz else bytes(header))
    return path


def int_volume(seed: int = 0) -> np.ndarray:
    return blob_volume(np.random.default_rng(seed), SHAPE).astype(np.int16)


# ---------------------------------------------------------------------------------------------
# Input scans: each bad file sits beside two good ones, so the message must name the right file.


def _text(p: Path) -> Path:
    p.write_text("this is not a NIfTI file")
    return p


def _truncated_gzip(p: Path) -> Path:
    write_nifti(p, blob_volume(np.random.default_rng(1), SHAPE))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    return p


def _short_data(p: Path) -> Path:
    """Uncompressed .nii whose header promises 10x9x11 float32 voxels but the file ends early."""
    write_nifti(p, blob_volume(np.random.default_rng(2), SHAPE))
    p.write_bytes(p.read_bytes()[: 352 + 100])
    return p


def _nonfinite(p: Path) -> Path:
    v = blob_volume(np.random.default_rng(3), SHAPE)
    v[1, 2, 3], v[4, 5, 6] = np.nan, np.inf
    return write_nifti(p, v)


def _sheared(p: Path) -> Path:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[0, 1] = 1.0
    return write_nifti(p, blob_volume(np.random.default_rng(4), SHAPE), affine=affine)


BAD_SCANS: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    # case: (file name, how to make it, part of the reason)
    "plain text named .nii.gz": ("bad.nii.gz", _text, "not a readable NIfTI file"),
    "truncated gzip": ("bad.nii.gz", _truncated_gzip, "truncated or unreadable voxel data"),
    "header claims more data": ("bad.nii", _short_data, "truncated or unreadable voxel data"),
    "NaN and inf voxels": ("bad.nii.gz", _nonfinite, "2 voxels are NaN or infinite"),
    "scl_slope inf": (
        "bad.nii",
        lambda p: set_scaling(write_nifti(p, int_volume()), np.inf, 0.0),
        "scl_slope is inf",
    ),
    "scl_slope overflows float32": (
        "bad.nii.gz",
        lambda p: set_scaling(write_nifti(p, int_volume()), 1e38, 0.0),
        "after scaling by scl_slope=1e+38",
    ),
    "scl_inter NaN with a slope": (
        "bad.nii",
        lambda p: set_scaling(write_nifti(p, int_volume()), 2.0, np.nan),
        "scl_inter is not finite",
    ),
    "2D image": (
        "bad.nii.gz",
        lambda p: write_nifti(p, np.random.rand(10, 9).astype(np.float32)),
        "not a 3D",
    ),
    "true 4D series": (
        "bad.nii.gz",
        lambda p: write_nifti(p, np.random.rand(*SHAPE, 3).astype(np.float32)),
        "true 4D series",
    ),
    "zero-size dimension": (
        "bad.nii.gz",
        lambda p: write_nifti(p, np.zeros((10, 0, 11), np.float32)),
        "zero-size dimension",
    ),
    "sheared affine": ("bad.nii.gz", _sheared, "sheared affine"),
}


@pytest.mark.parametrize("case", list(BAD_SCANS))
def test_train_refuses_bad_scan(case: str, tmp_path: Path, capsys):
    name, make, reason = BAD_SCANS[case]
    data = tmp_path / "scans"
    for i in range(2):
        write_nifti(data / f"good_{i}.nii.gz", blob_volume(np.random.default_rng(10 + i), SHAPE))
    bad = make(data / name)
    before = snapshot(data)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", data, "--output", run, "--config", "tiny", "--max-steps", "1"], capsys)
    line = assert_one_line_error(code, err, str(bad), reason, "--skip-invalid")
    assert line.startswith(f"error: {bad}: ")
    assert not run.exists() and snapshot(data) == before


@pytest.mark.parametrize("case", list(BAD_SCANS))
def test_info_refuses_bad_scan(case: str, tmp_path: Path, capsys):
    name, make, reason = BAD_SCANS[case]
    bad = make(tmp_path / name)
    code, _, err = run_cli(["info", bad], capsys)
    assert assert_one_line_error(code, err, reason).startswith(f"error: {bad}: ")


def test_info_folder_lists_bad_scans_in_its_table(tmp_path: Path, capsys):
    write_nifti(tmp_path / "good.nii.gz", blob_volume(np.random.default_rng(7), SHAPE))
    _, make, _ = BAD_SCANS["scl_slope inf"]
    make(tmp_path / "bad.nii")
    code, out, err = run_cli(["info", tmp_path], capsys)
    assert code == 2 and err.strip() == "1 of 2 scans are unusable"
    assert "bad.nii" in out and "scl_slope" in out  # the table wraps the reason within its column


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: d / "missing", "no such folder"),
        (lambda d: d, "the folder is empty"),
        (lambda d: (d / "notes.txt").write_text("x") and d, "no .nii or .nii.gz files in this folder"),
        (lambda d: _text(d / "scan.nii.gz"), "not a readable NIfTI file"),
    ],
    ids=["nonexistent path", "empty folder", "no NIfTI in folder", "single bad file as DATA_DIR"],
)
def test_train_refuses_bad_data_path(make, reason, tmp_path: Path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    path = make(folder)
    code, _, err = run_cli(["train", path, "--output", tmp_path / "run", "--config", "tiny"], capsys)
    assert_one_line_error(code, err, str(path), reason)
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path: Path):
    with pytest.raises(InputError, match="no such folder"):
        main(["--debug", "train", str(tmp_path / "missing"), "--output", str(tmp_path / "run")])


# ---------------------------------------------------------------------------------------------
# Scaling and geometry that are valid but easy to get wrong: accepted, explicit, and recorded.


def test_scl_slope_zero_or_nan_means_unscaled(tmp_path: Path):
    """NIfTI-1: scl_slope 0 means no scaling; nibabel writes NaN for unscaled. Both keep the stored
    values (the intercept is ignored with them), in preflight and in the MONAI transforms alike."""
    from monai.transforms import LoadImage

    stored = int_volume()
    for slope, inter in [(0.0, 0.0), (np.nan, np.nan), (0.0, 500.0), (np.nan, 7.0)]:
        path = set_scaling(write_nifti(tmp_path / "s.nii.gz", stored), slope, inter)
        _, data, info = read_scan(path)
        np.testing.assert_array_equal(data, stored)
        assert (info.intensity_min, info.intensity_max) == (stored.min(), stored.max())
        np.testing.assert_array_equal(np.asarray(LoadImage(image_only=True)(str(path))), stored)
    # A real scaling is applied, by both.
    path = set_scaling(write_nifti(tmp_path / "s.nii.gz", stored), 2.0, 10.0)
    np.testing.assert_array_equal(read_scan(path)[1], stored * 2.0 + 10.0)
    np.testing.assert_array_equal(np.asarray(LoadImage(image_only=True)(str(path))), stored * 2.0 + 10.0)


def _forms_disagree(path: Path) -> Path:
    """Stored values rise along the first axis; qform says that axis runs to the right (RAS),
    sform says to the left (LAS)."""
    ramp = np.broadcast_to(np.arange(SHAPE[0], dtype=np.float32)[:, None, None], SHAPE).copy()
    ramp += np.random.default_rng(5).normal(0, 0.01, SHAPE).astype(np.float32)
    img = nib.Nifti1Image(ramp, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    sform = np.diag([-2.0, 2.0, 2.0, 1.0])
    sform[0, 3] = 18.0
    img.set_sform(sform, code=2)
    nib.save(img, str(path))
    return path


def test_qform_sform_disagreement_uses_sform(tmp_path: Path):
    path = _forms_disagree(tmp_path / "forms.nii.gz")
    _, _, info = read_scan(path)
    assert info.warnings == ["qform and sform disagree; using sform"] and info.axcodes == "LAS"
    # MONAI's NibabelReader takes img.affine, which is the sform when its code is set: in RAS the
    # stored ramp (rising towards the left, by the sform) must fall along the first axis.
    cfg = DataConfig(image_size=SHAPE, lower_percentile=0.0, upper_percentile=100.0)
    profile = build_transforms(cfg)({"image": str(path)})["image"][0].mean(dim=(1, 2))
    assert torch.all(profile[1:] < profile[:-1]), profile


def test_train_accepts_unscaled_and_forms_files_and_records_them(tmp_path: Path, capsys):
    """One run over the valid-but-unusual files: the qform/sform warning is shown and lands in
    dataset.json; scl_slope 0 / NaN files are trained on their stored values."""
    data = tmp_path / "scans"
    write_nifti(data / "good.nii.gz", blob_volume(np.random.default_rng(6), SHAPE))
    forms = _forms_disagree(data / "forms.nii.gz")
    zero = set_scaling(write_nifti(data / "slope0.nii", int_volume(1)), 0.0, 0.0)
    nan = set_scaling(write_nifti(data / "slopenan.nii.gz", int_volume(2)), np.nan, np.nan)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", data, "--output", run, "--config", "tiny", "--max-steps", "1"], capsys)
    assert code == 0, err
    unwrapped = "".join(err.split())  # rich wraps long log lines
    assert "".join(f"warning: {forms}: qform and sform disagree; using sform".split()) in unwrapped
    record = json.loads((run / "dataset.json").read_text())
    assert record["n_used"] == 4 and record["n_skipped"] == 0
    by_name = {Path(f["path"]).name: f for f in record["files"]}
    assert by_name["forms.nii.gz"]["warnings"] == ["qform and sform disagree; using sform"]
    for path, seed in [(zero, 1), (nan, 2)]:
        stored = int_volume(seed)
        entry = by_name[path.name]
        assert (entry["intensity_min"], entry["intensity_max"]) == (stored.min(), stored.max())


# ---------------------------------------------------------------------------------------------
# The output folder


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    data = tmp_path / "scans"
    for i in range(2):
        write_nifti(data / f"s{i}.nii.gz", blob_volume(np.random.default_rng(20 + i), SHAPE))
    return data


def test_output_is_a_file(scans: Path, tmp_path: Path, capsys):
    target = tmp_path / "run"
    target.write_text("keep me")
    before = snapshot(tmp_path)
    code, _, err = run_cli(["train", scans, "--output", target, "--config", "tiny"], capsys)
    assert_one_line_error(code, err, str(target), "exists and is not a folder")
    code, _, err = run_cli(["train", scans, "--output", target / "run", "--config", "tiny"], capsys)
    assert_one_line_error(code, err, str(target), "is a file, so the output folder cannot be created")
    assert snapshot(tmp_path) == before


def test_output_under_a_read_only_location(scans: Path, tmp_path: Path, capsys):
    """/proc/1 refuses writes even to root (os.access says so), unlike a chmod-ed folder."""
    locked = Path("/proc/1")
    if not locked.is_dir() or os.access(locked, os.W_OK | os.X_OK):
        pytest.skip("needs a /proc/1 that refuses writes")
    code, _, err = run_cli(["train", scans, "--output", locked / "medddpm-run", "--config", "tiny"], capsys)
    assert_one_line_error(code, err, str(locked), "no permission to write here")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into chmod 500 folders; see the os.access test")
def test_output_in_a_chmod_locked_folder(scans: Path, tmp_path: Path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run_cli(["train", scans, "--output", locked / "run", "--config", "tiny"], capsys)
    assert_one_line_error(code, err, str(locked), "no permission to write here")


def test_output_without_write_permission_checked_before_work(
    scans: Path, tmp_path: Path, capsys, monkeypatch
):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    code, _, err = run_cli(["train", scans, "--output", locked / "run", "--config", "tiny"], capsys)
    assert_one_line_error(code, err, str(locked), "no permission to write here")
    assert list(locked.iterdir()) == []


def test_read_only_file_system_is_an_input_error(scans: Path, tmp_path: Path, capsys, monkeypatch):
    """os.access can say yes where mkdir then fails (a read-only mount seen as root, say)."""
    target = tmp_path / "ro" / "run"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    code, _, err = run_cli(["train", scans, "--output", target, "--config", "tiny"], capsys)
    assert_one_line_error(code, err, str(target), "cannot write the run folder (Read-only file system)")


def test_existing_non_empty_output_is_refused(scans: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("my notes")
    before = snapshot(run)
    code, _, err = run_cli(["train", scans, "--output", run, "--config", "tiny"], capsys)
    assert_one_line_error(code, err, str(run), "--resume", "--overwrite")
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# Resuming from a checkpoint that is damaged, half-written or from another config


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny run (2 steps, checkpoint step-00000002)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def _resume(run: Path, tiny_run: Path, capsys, *extra: str) -> tuple[int, str]:
    before = snapshot(run)
    code, _, err = run_cli(["train", tiny_run.parent / "scans", "--output", run, "--resume", *extra], capsys)
    assert snapshot(run) == before, "a refused resume must leave the run folder as it was"
    return code, err


def _other_model_weights(path: Path) -> None:
    cfg = build_config("tiny", ["model.channels=[16,32]"])
    save_file({k: v.contiguous() for k, v in build_unet(cfg.model).state_dict().items()}, path)


DAMAGE = {
    # case: (how to damage checkpoints/step-00000002, file named, part of the reason)
    "truncated weights": (
        lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:1000]),
        "model.safetensors",
        "corrupt or unreadable weights",
    ),
    "weights of another model": (
        lambda c: _other_model_weights(c / "ema.safetensors"),
        "ema.safetensors",
        "weights do not match the checkpoint's model config",
    ),
    "truncated training state": (
        lambda c: (c / "training_state.pt").write_bytes((c / "training_state.pt").read_bytes()[:500]),
        "training_state.pt",
        "corrupt training state (PytorchStreamReader failed reading zip archive",
    ),
    "half-written (a file missing)": (
        lambda c: (c / "training_state.pt").unlink(),
        "step-00000002",
        "incomplete checkpoint: missing training_state.pt",
    ),
    "garbage meta.json": (
        lambda c: (c / "meta.json").write_text("{not json"),
        "step-00000002",
        "unreadable meta.json",
    ),
    "training state without its fields": (
        lambda c: torch.save({"step": 2}, c / "training_state.pt"),
        "training_state.pt",
        "training state lacks optimizer",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_refuses_damaged_checkpoint(case: str, run_copy: Path, tiny_run: Path, capsys):
    damage, named, reason = DAMAGE[case]
    damage(run_copy / "checkpoints" / "step-00000002")
    code, err = _resume(run_copy, tiny_run, capsys)
    assert_one_line_error(code, err, named, reason)


def test_resume_refuses_incompatible_config(run_copy: Path, tiny_run: Path, capsys):
    code, err = _resume(run_copy, tiny_run, capsys, "--set", "model.channels=[16,32]")
    assert_one_line_error(code, err, "step-00000002", "cannot resume: model.channels")
    code, err = _resume(run_copy, tiny_run, capsys, "--image-size", "24")
    assert_one_line_error(code, err, "step-00000002", "cannot resume: data.image_size")


# ---------------------------------------------------------------------------------------------
# Numerical guards


def test_nonfinite_steps_abort_with_advice(scans: Path, tmp_path: Path, capsys):
    """A learning rate of 1e30 wrecks the weights at step 1; every later step is non-finite."""
    args = ["train", scans, "--output", tmp_path / "run", "--config", "tiny", "--max-steps", "6"]
    code, _, err = run_cli([*args, "--set", "train.lr=1e30", "--set", "train.max_nonfinite=2"], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err
    assert last.startswith("error: 2 steps in a row had a non-finite loss or gradient"), last
    assert "--precision fp32" in last and "lower train.lr" in last


def test_one_nonfinite_step_is_skipped_counted_and_training_goes_on(scans: Path, tmp_path: Path, monkeypatch):
    import csv

    import medddpm.training.loop as training

    calls = []

    def loss_nan_once(*args, **kwargs):
        loss = diffusion_loss(*args, **kwargs)
        calls.append(1)
        return loss * float("nan") if len(calls) == 2 else loss

    diffusion_loss = training.diffusion_loss
    monkeypatch.setattr(training, "diffusion_loss", loss_nan_once)
    cfg = build_config("tiny", ["train.max_steps=3", "train.checkpoint_every=10"])
    result = training.train(cfg, scans, tmp_path / "run")
    assert result.step == 3 and not result.interrupted
    with (tmp_path / "run" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert [r["skipped_nonfinite"] for r in rows] == ["0", "1", "1"]
    assert rows[1]["loss"] == "nan" and rows[2]["loss"] != "nan"
    from medddpm.training.checkpoint import open_checkpoint

    ckpt = open_checkpoint(result.checkpoint)
    assert ckpt.training_state()["skipped_nonfinite"] == 1
    assert all(
        torch.isfinite(w).all() for w in [*ckpt.weights(ema=True).values(), *ckpt.weights(False).values()]
    )


# ---------------------------------------------------------------------------------------------
# Start-up checks


@pytest.mark.parametrize("version", ["2.9.0", "2.9.0+cu128", "2.9.0+cpu"])
def test_torch_2_9_0_is_refused(version: str):
    from medddpm.runtime import check_torch_version

    with pytest.raises(InputError, match=r"torch 2\.9\.0 is not supported.*pip install"):
        check_torch_version(version)


@pytest.mark.parametrize("version", ["2.8.0", "2.9.1+cu128", "2.10.0", "2.13.0+cpu"])
def test_other_torch_releases_pass(version: str):
    from medddpm.runtime import check_torch_version

    check_torch_version(version)


@pytest.mark.parametrize(
    "command",
    [
        ["train", "{tmp}", "--output", "{tmp}/run"],
        ["train", "{tmp}", "--output", "{tmp}/run", "--dry-run"],
        ["sample", "{tmp}", "--output", "{tmp}/out", "--num", "1"],
        ["evaluate", "{tmp}", "{tmp}", "--output", "{tmp}/report"],
        ["info", "{tmp}"],
    ],
    ids=lambda c: " ".join(c[:1] + [a for a in c if a == "--dry-run"]),
)
def test_every_command_refuses_a_broken_torch(command: list[str], tmp_path: Path, capsys, monkeypatch):
    """Pretend the installed torch is a broken release: every command stops first, with exit 2."""
    import medddpm.runtime as runtime

    installed = torch.__version__.split("+")[0]
    monkeypatch.setitem(runtime.BROKEN_TORCH, installed, "(pretend) it breaks 3D work")
    code, _, err = run_cli([a.format(tmp=tmp_path) for a in command], capsys)
    assert_one_line_error(code, err, f"torch {installed} is not supported", "(pretend) it breaks 3D work")
    assert list(tmp_path.iterdir()) == []


def test_conv3d_bf16_comparison_on_cpu():
    """The comparison itself: real bf16 rounding stays far below the tolerance, a broken kernel does not."""
    from medddpm.runtime import CONV3D_BF16_TOLERANCE, conv3d_bf16_error, conv3d_bf16_warning

    cpu = torch.device("cpu")
    honest = conv3d_bf16_error(cpu, (1, 8, 12, 12, 12))
    assert 0 < honest < CONV3D_BF16_TOLERANCE / 3

    def broken(x, w, **kwargs):  # what the cuDNN bug looks like: a garbled bf16 result
        y = torch.nn.functional.conv3d(x, w, **kwargs)
        if x.dtype == torch.bfloat16:
            y = y.clone()
            y[..., : y.shape[-1] // 2] = 0
        return y

    def nan(x, w, **kwargs):
        y = torch.nn.functional.conv3d(x, w, **kwargs)
        return y * float("nan") if x.dtype == torch.bfloat16 else y

    garbled = conv3d_bf16_error(cpu, (1, 8, 12, 12, 12), conv=broken)
    assert garbled > 10 * CONV3D_BF16_TOLERANCE
    assert conv3d_bf16_error(cpu, (1, 4, 8, 8, 8), conv=nan) == float("inf")
    assert conv3d_bf16_warning(honest, 91000) is None
    message = conv3d_bf16_warning(garbled, 91000)
    assert "cuDNN 9.10" in message and "--precision fp32" in message and "differ from fp32" in message
    assert "cuDNN 8.9" in conv3d_bf16_warning(garbled, 8902)


def test_conv3d_bf16_check_runs_once_and_only_for_cuda_bf16(monkeypatch):
    import medddpm.runtime as runtime

    ran = []
    monkeypatch.setattr(runtime, "conv3d_bf16_error", lambda device, shape: ran.append(shape) or 0.5)
    monkeypatch.setattr(runtime, "_conv3d_checked", set())
    shape = (1, 8, 16, 16, 16)
    assert runtime.check_conv3d_bf16(torch.device("cpu"), "bf16", shape) is None
    assert runtime.check_conv3d_bf16(torch.device("cuda", 0), "fp32", shape) is None
    assert ran == []
    assert "differ from fp32 by 50.0%" in runtime.check_conv3d_bf16(torch.device("cuda", 0), "bf16", shape)
    assert runtime.check_conv3d_bf16(torch.device("cuda", 0), "bf16", shape) is None  # once
    assert ran == [shape]


# ---------------------------------------------------------------------------------------------
# sample: a bad run folder, checkpoint or output folder


def _sample(run: Path, out: Path, capsys, *extra) -> tuple[int, str]:
    before = snapshot(run, out)
    code, _, err = run_cli(["sample", run, "--output", out, "--num", "1", *extra], capsys)
    assert snapshot(run, out) == before, "a refused sampling must write nothing"
    return code, err


def test_sample_refuses_bad_run_folders(tiny_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    code, err = _sample(tmp_path / "missing", out, capsys)
    assert_one_line_error(code, err, str(tmp_path / "missing"), "no such run or checkpoint folder")
    (tmp_path / "empty").mkdir()
    code, err = _sample(tmp_path / "empty", out, capsys)
    assert_one_line_error(code, err, str(tmp_path / "empty"), "no complete checkpoint in this run folder")
    code, err = _sample(tiny_run, out, capsys, "--checkpoint", "step-99")
    assert_one_line_error(code, err, str(tiny_run), "no checkpoint step-99 (steps available: 2)")
    code, err = _sample(tiny_run, out, capsys, "--num", "0")
    assert_one_line_error(code, err, "--num must be at least 1")
    assert not out.exists()


@pytest.mark.parametrize("case", ["truncated weights", "half-written (a file missing)", "garbage meta.json"])
def test_sample_refuses_damaged_checkpoint(case: str, run_copy: Path, tmp_path: Path, capsys):
    damage, named, reason = DAMAGE[case]
    if case == "truncated weights":  # sampling reads the EMA weights
        damage, named = (
            lambda c: (c / "ema.safetensors").write_bytes((c / "ema.safetensors").read_bytes()[:1000]),
            "ema.safetensors",
        )
    damage(run_copy / "checkpoints" / "step-00000002")
    code, err = _sample(run_copy, tmp_path / "out", capsys)
    assert_one_line_error(code, err, named, reason)
    assert not (tmp_path / "out").exists()


def test_sample_refuses_foreign_or_file_output(tiny_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = _sample(tiny_run, out, capsys)
    assert_one_line_error(code, err, str(out), "output folder is not empty", "--overwrite")
    (tmp_path / "file").write_text("mine")
    code, err = _sample(tiny_run, tmp_path / "file", capsys)
    assert_one_line_error(code, err, str(tmp_path / "file"), "exists and is not a folder")


# ---------------------------------------------------------------------------------------------
# evaluate: bad sets, mismatched shapes, a report folder in the way


@pytest.fixture
def eval_sets(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(30)
    for i in range(3):
        write_nifti(tmp_path / "real" / f"r{i}.nii.gz", blob_volume(rng, (16, 16, 16)))
        write_nifti(tmp_path / "synth" / f"s{i}.nii.gz", blob_volume(rng, (16, 16, 16)))
    return tmp_path / "real", tmp_path / "synth"


def _evaluate(real: Path, synth: Path, report: Path, capsys, *extra) -> tuple[int, str]:
    before = snapshot(real, synth, report)
    code, _, err = run_cli(["evaluate", real, synth, "--output", report, *extra], capsys)
    assert snapshot(real, synth, report) == before, "a refused evaluation must write nothing"
    return code, err


def test_evaluate_refuses_mismatched_shapes(eval_sets, tmp_path: Path, capsys):
    real, synth = eval_sets
    odd = write_nifti(synth / "s1.nii.gz", blob_volume(np.random.default_rng(31), (16, 16, 20)))
    code, err = _evaluate(real, synth, tmp_path / "report", capsys)
    assert_one_line_error(code, err, str(odd), "shape 16x16x20 (RAS) differs from 16x16x16", "--run")
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("case", ["plain text named .nii.gz", "truncated gzip", "NaN and inf voxels"])
def test_evaluate_refuses_bad_scan(case: str, eval_sets, tmp_path: Path, capsys):
    real, synth = eval_sets
    name, make, reason = BAD_SCANS[case]
    bad = make(synth / name)
    code, err = _evaluate(real, synth, tmp_path / "report", capsys)
    assert_one_line_error(code, err, str(bad), reason)
    assert not (tmp_path / "report").exists()


def test_evaluate_refuses_bad_sets_and_report_folder(eval_sets, tmp_path: Path, capsys):
    real, synth = eval_sets
    report = tmp_path / "report"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _evaluate(real, empty, report, capsys)
    assert_one_line_error(code, err, str(empty), "the folder is empty")
    for extra in list(synth.iterdir())[1:]:
        extra.unlink()
    code, err = _evaluate(real, synth, report, capsys)
    assert_one_line_error(code, err, str(synth), "the synthetic set has 1 scan", "at least 2")
    report.mkdir()
    (report / "notes.txt").write_text("mine")
    code, err = _evaluate(real, real, report, capsys)
    assert_one_line_error(code, err, str(report), "not empty", "--overwrite")
    code, err = _evaluate(real, real, tmp_path / "r2", capsys, "--feature-weights", tmp_path / "none.pth")
    assert_one_line_error(code, err, str(tmp_path / "none.pth"), "feature-network weights not found")
