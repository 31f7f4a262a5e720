"""``medddpm sample``: geometry and units of the files, determinism, resuming, and bad input.

One tiny CT model (16³, 2 training steps) serves the whole module; it is untrained, so its samples
are noise, but geometry, units, seeding and file handling do not depend on how good they look.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medddpm.cli import main
from medddpm.config import SampleConfig, config_from_dict
from medddpm.diffusion.samplers import SAMPLERS, X0_RANGE, SamplerEntry, denoise, plan_steps
from medddpm.diffusion.schedule import NoiseSchedule
from medddpm.errors import InputError
from medddpm.inference.sample_to_folder import find_checkpoint, read_output, sample_name, shard
from medddpm.runtime import torch_threads

SPACING = (2.0, 2.5, 3.0)  # anisotropic, so a swapped or dropped voxel size shows
A_MIN, A_MAX = -500.0, 700.0  # an asymmetric HU window, so a wrong inverse mapping shows
FAST = ["--steps", "3"]


def cli(capsys, *args) -> tuple[int, str]:
    """Run ``medddpm sample ARGS``; returns the exit code and what went to stderr."""
    capsys.readouterr()
    try:
        main(["sample", *(str(a) for a in args)])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def voxels(folder: Path, index: int, fmt: str = "nii.gz") -> np.ndarray:
    return read_output(folder / sample_name(index, fmt))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """16³ volumes gain nothing from a second thread; on a busy machine its synchronisation costs 10x."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A CT run of the tiny config, 2 steps, trained on 20³ scans of 2.0 x 2.5 x 3.0 mm (with a preview)."""
    from medddpm.config import build_config
    from medddpm.training.loop import train

    root = tmp_path_factory.mktemp("sample")
    rng = np.random.default_rng(0)
    for i in range(4):
        data = rng.normal(0, 400, (20, 20, 20)).astype(np.float32)
        (root / "scans").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.diag([*SPACING, 1.0])), str(root / "scans" / f"ct_{i}.nii.gz"))
    overrides = ["data.modality=ct", f"data.a_min={A_MIN}", f"data.a_max={A_MAX}", "train.preview_every=2"]
    cfg = build_config("tiny", overrides, {"train.max_steps": 2})
    train(cfg, root / "scans", root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def first(run: Path, tmp_path_factory) -> Path:
    """Three samples, seeds 0, 1, 2, drawn one at a time."""
    out = tmp_path_factory.mktemp("first") / "out"
    main(["sample", str(run), "--output", str(out), "--num", "3", "--batch-size", "1", *FAST])
    return out


@pytest.fixture
def checkpoint_copy(run: Path, tmp_path: Path) -> Path:
    """A copy of the run's checkpoint folder, to damage or edit."""
    return Path(shutil.copytree(run / "checkpoints" / "step-00000002", tmp_path / "step-00000002"))


def test_training_preview_still_samples(run: Path):
    assert (run / "previews" / "step-00000002.png").stat().st_size > 0


def test_files_have_training_geometry_and_units(first: Path):
    assert sorted(p.name for p in first.iterdir()) == [
        "manifest.json", "preview.png", "sample_0000.nii.gz", "sample_0001.nii.gz", "sample_0002.nii.gz",
    ]  # fmt: skip
    for i in range(3):
        path = first / sample_name(i, "nii.gz")
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        assert data.shape == (16, 16, 16)
        assert img.get_data_dtype() == np.int16
        assert np.isfinite(data).all()
        assert data.min() >= A_MIN and data.max() <= A_MAX
        assert img.header.get_zooms() == pytest.approx(SPACING)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        qform, qcode = img.get_qform(coded=True)
        sform, scode = img.get_sform(coded=True)
        assert qcode == scode == 1
        np.testing.assert_allclose(qform, sform, atol=1e-5)
        centre = img.affine @ np.array([7.5, 7.5, 7.5, 1.0])
        np.testing.assert_allclose(centre[:3], 0, atol=1e-5)

        # SimpleITK works in LPS: its origin and direction are nibabel's RAS affine with x, y negated.
        image = sitk.ReadImage(str(path))
        lps = np.diag([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(image.GetSpacing(), SPACING)
        np.testing.assert_allclose(image.GetOrigin(), lps @ img.affine[:3, 3], atol=1e-4)
        np.testing.assert_allclose(
            np.reshape(image.GetDirection(), (3, 3)), lps @ (img.affine[:3, :3] / SPACING)
        )
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), data)


def test_manifest_records_provenance(run: Path, first: Path):
    manifest = json.loads((first / "manifest.json").read_text())
    ema = run / "checkpoints" / "step-00000002" / "ema.safetensors"
    assert manifest["status"] == "complete"
    assert manifest["checkpoint"]["sha256"] == hashlib.sha256(ema.read_bytes()).hexdigest()
    assert manifest["checkpoint"]["step"] == 2
    assert (manifest["sampler"], manifest["steps"], manifest["eta"]) == ("dpm++", 3, 0.0)
    assert [(s["file"], s["seed"]) for s in manifest["samples"]] == [
        (sample_name(i, "nii.gz"), i) for i in range(3)
    ]
    assert manifest["seconds_per_volume"] > 0
    assert manifest["precision"] == "fp32" and manifest["device"] == "cpu"
    assert manifest["geometry"]["spacing"] == list(SPACING)
    assert manifest["intensity"] == {"modality": "ct", "units": "HU", "dtype": "int16"}
    assert {"torch", "monai", "medddpm"} <= set(manifest["versions"])
    assert (first / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_i_comes_from_seed_plus_i(run: Path, first: Path, tmp_path: Path, capsys):
    code, err = cli(
        capsys, run, "--output", tmp_path / "s1", "--num", "2", "--seed", "1", "--batch-size", "1", *FAST
    )
    assert code == 0, err
    # The same seed gives the same voxels (CPU, fp32), whichever position it has in the run.
    np.testing.assert_array_equal(voxels(tmp_path / "s1", 0), voxels(first, 1))
    np.testing.assert_array_equal(voxels(tmp_path / "s1", 1), voxels(first, 2))
    # Different seeds give different volumes.
    assert (voxels(first, 1) != voxels(first, 2)).mean() > 0.2


def test_batch_size_does_not_change_samples(run: Path, first: Path, tmp_path: Path, capsys):
    code, err = cli(capsys, run, "--output", tmp_path / "b3", "--num", "3", "--batch-size", "3", *FAST)
    assert code == 0, err
    for i in range(3):
        a, b = voxels(first, i), voxels(tmp_path / "b3", i)
        # Batched kernels round differently (~1e-7 in model space); int16 rounding can turn that
        # into 1 HU on a voxel that sits on a rounding boundary, nothing more.
        assert np.abs(a - b).max() <= 1
        assert (a == b).mean() > 0.99


def test_cpu_sampling_runs_channels_last_with_the_plain_layouts_volumes(
    run: Path, first: Path, tmp_path: Path, capsys, monkeypatch
):
    """On CPU the network samples in channels-last 3D (1.4x faster at the demo's size,
    benchmarks/bench_sample_layout.py); the volumes are those of the plain layout up to rounding."""
    import medddpm.diffusion.generate as generate_module
    import medddpm.models.unet as unet_module

    layouts: list[bool] = []
    plain_generate_batches = generate_module.generate_batches

    def recording(model, *args, **kwargs):
        conv = next(p for p in model.parameters() if p.ndim == 5 and p.shape[1] > 1)  # 1 channel: both
        layouts.append(conv.is_contiguous(memory_format=torch.channels_last_3d))
        return plain_generate_batches(model, *args, **kwargs)

    monkeypatch.setattr(generate_module, "generate_batches", recording)
    code, err = cli(capsys, run, "--output", tmp_path / "cl", "--num", "3", "--batch-size", "1", *FAST)
    assert code == 0, err
    monkeypatch.setattr(unet_module, "preferred_memory_format", lambda device: torch.contiguous_format)
    code, err = cli(capsys, run, "--output", tmp_path / "plain", "--num", "3", "--batch-size", "1", *FAST)
    assert code == 0, err
    assert layouts == [True, False]
    for i in range(3):
        a, b = voxels(tmp_path / "cl", i), voxels(tmp_path / "plain", i)
        assert np.abs(a - b).max() <= 1  # int16 HU: rounding may flip a voxel on a boundary by 1
        assert (a == b).mean() > 0.99
        np.testing.assert_array_equal(a, voxels(first, i))  # the module's samples are channels-last


def test_interrupted_folder_is_completed_and_kept(run: Path, first: Path, tmp_path: Path, capsys):
    out = Path(shutil.copytree(first, tmp_path / "out"))
    (out / "sample_0001.nii.gz").unlink()
    (out / ".sample_0002-x1y2.nii.gz").write_bytes(b"half-written")  # a crash mid-write leaves these
    old = 1_000_000_000
    for i in (0, 2):
        os.utime(out / sample_name(i, "nii.gz"), (old, old))

    code, err = cli(capsys, run, "--output", out, "--num", "3", "--batch-size", "1", *FAST)
    assert code == 0, err
    assert "1 drawn, 2 already there" in " ".join(err.split())
    for i in (0, 2):
        assert (out / sample_name(i, "nii.gz")).stat().st_mtime == old
    np.testing.assert_array_equal(voxels(out, 1), voxels(first, 1))
    assert not (out / ".sample_0002-x1y2.nii.gz").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["samples"]) == 3


def test_ctrl_c_leaves_an_incomplete_manifest_and_a_rerun_completes_it(
    run: Path, first: Path, tmp_path: Path, capsys, monkeypatch
):
    """A real SIGINT (Python's own handler, as a terminal's Ctrl-C) half-way through the second volume:
    exit 130, the first volume kept, no partial second one, the manifest says "incomplete"; the same
    command again draws only what is missing, and the volumes equal an uninterrupted run's."""
    import contextlib
    import signal

    import medddpm.cli.sample as sample_command

    out = tmp_path / "out"
    args = [run, "--output", out, "--num", "3", "--batch-size", "1", *FAST]

    @contextlib.contextmanager
    def ctrl_c_in_the_second_volume():
        written = []

        def on_step(i: int, total: int) -> None:
            if written and written[-1] == 1 and i == 2:
                signal.raise_signal(signal.SIGINT)

        yield lambda done, total: written.append(done), on_step

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(sample_command, "sampling_progress", ctrl_c_in_the_second_volume)
        code, err = cli(capsys, *args)
    finally:
        signal.signal(signal.SIGINT, before)
    assert code == 130 and "Traceback" not in err, err
    said = f"Interrupted; {out} is incomplete: run the same command again to finish it"
    assert "".join(said.split()) in "".join(err.split())  # rich wraps long paths
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", sample_name(0, "nii.gz")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete"

    monkeypatch.undo()
    code, err = cli(capsys, *args)
    assert code == 0, err
    assert "2 drawn, 1 already there" in " ".join(err.split())
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    for i in range(3):
        np.testing.assert_array_equal(voxels(out, i), voxels(first, i))


def test_another_recipe_is_refused_then_overwritten(run: Path, first: Path, tmp_path: Path, capsys):
    out = Path(shutil.copytree(first, tmp_path / "out"))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, err = cli(capsys, run, "--output", out, "--num", "3", "--sampler", "ddim", *FAST)
    assert code == 2
    assert err.count("\n") == 1 and str(out) in err and "sampler" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    code, err = cli(capsys, run, "--output", out, "--num", "1", "--sampler", "ddim", "--overwrite", *FAST)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "preview.png", "sample_0000.nii.gz"]
    assert json.loads((out / "manifest.json").read_text())["sampler"] == "ddim"


def test_mri_checkpoint_writes_unit_scale_float_mha_with_raw_weights(
    checkpoint_copy: Path, tmp_path: Path, capsys
):
    meta = json.loads((checkpoint_copy / "meta.json").read_text())
    meta["config"]["data"]["modality"] = "mri"
    (checkpoint_copy / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "mri"
    code, err = cli(
        capsys, checkpoint_copy, "--output", out, "--num", "1", "--format", "mha", "--no-ema", *FAST
    )
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["checkpoint"]["weights"] == "model.safetensors"
    image = sitk.ReadImage(str(out / "sample_0000.mha"))
    data = sitk.GetArrayFromImage(image)
    assert data.dtype == np.float32 and data.shape == (16, 16, 16)
    assert data.min() >= 0.0 and data.max() <= 1.0
    np.testing.assert_allclose(image.GetSpacing(), SPACING)
    np.testing.assert_allclose(image.GetDirection(), [-1, 0, 0, 0, -1, 0, 0, 0, 1])
    np.testing.assert_allclose(image.GetOrigin(), [7.5 * 2.0, 7.5 * 2.5, -7.5 * 3.0])


def _damage(kind: str, run: Path, checkpoint: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(RUN_DIR to pass, path the message must name) for each kind of bad checkpoint."""
    if kind == "missing":
        return tmp_path / "nowhere", tmp_path / "nowhere"
    if kind == "no checkpoint":
        (tmp_path / "empty_run").mkdir()
        return tmp_path / "empty_run", tmp_path / "empty_run"
    if kind == "half-written":
        (checkpoint / "ema.safetensors").unlink()
        return checkpoint, checkpoint
    if kind == "corrupt weights":
        weights = checkpoint / "ema.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        return checkpoint, weights
    if kind == "config does not fit weights":
        meta = json.loads((checkpoint / "meta.json").read_text())
        meta["config"]["model"]["channels"] = [16, 32]
        (checkpoint / "meta.json").write_text(json.dumps(meta))
        return checkpoint, checkpoint / "ema.safetensors"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing", "no checkpoint", "half-written", "corrupt weights", "config does not fit weights"]
)
def test_bad_checkpoint_is_one_line_exit_2_and_writes_nothing(
    kind: str, run: Path, checkpoint_copy: Path, tmp_path: Path, capsys
):
    run_dir, named = _damage(kind, run, checkpoint_copy, tmp_path)
    out = tmp_path / "out"
    code, err = cli(capsys, run_dir, "--output", out, "--num", "2")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:") and str(named) in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--num", "0"], "--num"),
        (["--num", "2", "--sampler", "lms"], "--sampler"),
        (["--num", "2", "--sampler", "euler"], "--sampler"),  # a sampler of the other process
        (["--num", "2", "--format", "png"], "--format"),
        (["--num", "2", "--steps", "0"], "--steps"),
        (["--num", "2", "--sampler", "ddim", "--eta", "2"], "--eta"),
        (["--num", "2", "--checkpoint", "step-7"], "step-7"),
        (["--num", "2", "--precision", "fp64"], "--precision"),
    ],
)
def test_bad_option_is_one_line_exit_2_and_writes_nothing(run: Path, tmp_path: Path, capsys, args, option):
    out = tmp_path / "out"
    code, err = cli(capsys, run, "--output", out, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:") and option in err
    assert not out.exists()


def test_foreign_folder_is_refused(run: Path, tmp_path: Path, capsys):
    out = tmp_path / "scans"
    out.mkdir()
    (out / "patient.nii.gz").write_bytes(b"not ours")
    code, err = cli(capsys, run, "--output", out, "--num", "1")
    assert code == 2 and err.count("\n") == 1 and str(out) in err
    assert [p.name for p in out.iterdir()] == ["patient.nii.gz"]


def test_processes_share_samples_by_index():
    shares = [shard(list(range(10)), rank, 3) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_checkpoint_is_found_from_a_run_or_a_checkpoint_folder(run: Path):
    step = run / "checkpoints" / "step-00000002"
    assert find_checkpoint(run) == step
    assert find_checkpoint(run, "step-2") == step
    assert find_checkpoint(step) == step
    assert find_checkpoint(step, "step-2") == step
    assert find_checkpoint(run, str(step)) == step


# ---------------------------------------------------------------------------------------------
# Flags over the checkpoint's sample section; a new sampler is one function and one registry entry


def test_flags_override_the_checkpoint_section_and_name_themselves():
    base = SampleConfig(sampler="ddim", steps=50, eta=0.5, batch_size=8)
    assert base.with_flags(sampler=None, steps=None, eta=None, batch_size=None) == base
    assert base.with_flags(steps=10) == SampleConfig(sampler="ddim", steps=10, eta=0.5, batch_size=8)
    assert base.with_flags(sampler="dpm++", eta=2.0).eta == 2.0
    for flags, message in [
        (
            {"sampler": "lms"},
            r"--sampler: unknown sampler 'lms' \(choose one of: ddpm, ddim, dpm\+\+, euler, heun\)",
        ),
        ({"eta": 1.5}, "--eta: must be between 0 and 1 for the ddim sampler"),
        ({"steps": 0}, "--steps: must be at least 1"),
        ({"batch_size": 0}, "--batch-size: must be at least 1"),
    ]:
        with pytest.raises(InputError, match=message):
            base.with_flags(**flags)
    with pytest.raises(InputError, match="sample.eta of the checkpoint config: must be between 0 and 1"):
        SampleConfig(sampler="dpm++", eta=2.0).with_flags(sampler="ddim")


def sample_toy(
    model, x, schedule, timesteps, *, eta, generator=None, clip=X0_RANGE, model_kwargs=None, callback=None
):
    """Euler steps of the probability-flow ODE in x_t / sqrt(ab_t) against sqrt(1 / ab_t - 1),
    which is DDIM with eta = 0 (Song et al. 2021, Eq. 14): so its samples must equal those."""
    plan = plan_steps(schedule, timesteps)
    for i, (t, ab_t, _, ab_s) in enumerate(plan, start=1):
        x0, eps = denoise(model, x, t, ab_t, schedule.prediction, clip, model_kwargs)
        x = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * eps
        if callback is not None:
            callback(i, len(plan))
    return x


def test_a_registered_sampler_is_validated_listed_and_sampled(run: Path, tmp_path: Path, capsys, monkeypatch):
    toy = SamplerEntry(
        sample_toy, eta=0.0, eta_range=(0.0, 0.0), description="Euler on the flow ODE (a test)"
    )
    monkeypatch.setitem(SAMPLERS, "toy", toy)

    assert config_from_dict({"sample": {"sampler": "toy"}}).sample.sampler == "toy"
    with pytest.raises(InputError, match="between 0 and 0 for the toy sampler"):
        config_from_dict({"sample": {"sampler": "toy", "eta": 0.5}})

    capsys.readouterr()
    main(["sample", "--help"])
    text = re.sub(r"[\s│]+", " ", capsys.readouterr().out)  # the help table's wrapping and borders
    assert "toy: Euler on the flow ODE (a test)" in text and "toy 0 (between 0 and 0)" in text

    code, err = cli(capsys, run, "--output", tmp_path / "toy", "--num", "2", "--sampler", "toy", *FAST)
    assert code == 0, err
    manifest = json.loads((tmp_path / "toy" / "manifest.json").read_text())
    assert (manifest["sampler"], manifest["steps"], manifest["eta"]) == ("toy", 3, 0.0)
    assert manifest["batch_size"] == 2  # no --batch-size: the checkpoint config's sample.batch_size
    ddim = ["--sampler", "ddim", "--eta", "0", *FAST]
    code, err = cli(capsys, run, "--output", tmp_path / "ddim", "--num", "2", *ddim)
    assert code == 0, err
    for i in range(2):
        np.testing.assert_array_equal(voxels(tmp_path / "toy", i), voxels(tmp_path / "ddim", i))


def test_bf16_on_cpu_is_finite_close_to_fp32_and_recorded(run: Path, first: Path, tmp_path: Path, capsys):
    """--precision bf16 on CPU: the network runs under CPU autocast, the sampler in fp32.

    In model space the result differs from fp32 by bf16 rounding (8-bit significand; ~5e-5 relative
    here, where much of an untrained model's x0 is clipped to [-1, 1]): not 0, and far from order 1.
    In HU, after int16 rounding and the window's clipping, by at most a few HU, and by less than half
    a HU on average (a v-prediction model clips less of x0 than an eps one, so more voxels sit near a
    rounding boundary of int16 and flip by 1 HU: measured mean 0.19 HU, max 1)."""
    from medddpm.diffusion.generate import generate
    from medddpm.models.unet import build_unet
    from medddpm.training.checkpoint import load_weights, open_checkpoint

    out = tmp_path / "bf16"
    code, err = cli(
        capsys, run, "--output", out, "--num", "1", "--batch-size", "1", "--precision", "bf16", *FAST
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["precision"], manifest["device"], manifest["status"]) == ("bf16", "cpu", "complete")
    low, full = voxels(out, 0).astype(np.float64), voxels(first, 0).astype(np.float64)
    assert np.isfinite(low).all()
    assert np.abs(low - full).max() <= 4 and np.abs(low - full).mean() < 0.5

    ckpt = open_checkpoint(run / "checkpoints" / "step-00000002")
    model = build_unet(ckpt.config.model)
    load_weights(model, ckpt.weights(ema=True), ckpt.path)
    schedule = NoiseSchedule.from_config(ckpt.config.diffusion)
    a, b = (
        generate(model, schedule, ckpt.config.data.image_size, [0], "dpm++", 3, precision=p)[0]
        for p in ("fp32", "bf16")
    )
    relative = float(torch.linalg.vector_norm(b - a) / torch.linalg.vector_norm(a))
    assert torch.isfinite(b).all() and 0 < relative < 1e-2  # 0: bf16 was not applied


def test_a_wavelet_rflow_checkpoint_samples_with_its_own_samplers_only(tmp_path: Path, capsys):
    """Wavelet space + rectified flow: euler (the default) and heun write volumes of the training
    size, decoded from 8 channels at half size; a ddpm sampler is refused before anything is written."""
    from medddpm.config import build_config
    from medddpm.training.loop import train

    rng = np.random.default_rng(0)
    for i in range(2):
        data = rng.normal(0, 1, (16, 16, 16)).astype(np.float32)
        (tmp_path / "scans").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.diag([*SPACING, 1.0])), str(tmp_path / "scans" / f"mr_{i}.nii.gz"))
    options = ["model.space=wavelet", "diffusion.process=rflow", "train.preview_every=1"]
    train(build_config("tiny", options, {"train.max_steps": 1}), tmp_path / "scans", tmp_path / "run")
    assert (tmp_path / "run" / "previews" / "step-00000001.png").stat().st_size > 0
    for sampler in ("euler", "heun"):
        out = tmp_path / sampler
        code, err = cli(capsys, tmp_path / "run", "--output", out, "--num", "1", "--sampler", sampler, *FAST)
        assert code == 0, err
        volume = voxels(out, 0)
        assert volume.shape == (16, 16, 16) and np.isfinite(volume).all()
        assert volume.min() >= 0 and volume.max() <= 1  # MRI samples on [0, 1]
    assert json.loads((tmp_path / "euler" / "manifest.json").read_text())["sampler"] == "euler"
    code, err = cli(
        capsys, tmp_path / "run", "--output", tmp_path / "ddim", "--num", "1", "--sampler", "ddim"
    )
    assert code == 2 and err.count("\n") == 1
    assert "--sampler" in err and "ddim sampler is for ddpm models" in err and "rflow process" in err
    assert not (tmp_path / "ddim").exists()


def test_sample_warns_when_the_ema_is_too_young(run: Path, tmp_path: Path):
    """Two training steps: the EMA weights are still mostly the first step's; sampling says so in one
    plain line (and still samples), and says nothing of it for the raw weights."""
    from medddpm.inference.sample_to_folder import sample_to_folder

    lines: list[str] = []
    result = sample_to_folder(run, tmp_path / "ema", 1, SampleConfig(steps=2), device="cpu", log=lines.append)
    warned = [line for line in lines if line.startswith("warning: the EMA weights at step 2")]
    assert len(warned) == 1 and warned[0].removeprefix("warning: ") in result.warnings
    assert result.files[0].is_file()
    lines.clear()
    raw = sample_to_folder(
        run, tmp_path / "raw", 1, SampleConfig(steps=2), ema=False, device="cpu", log=lines.append
    )
    assert not any("EMA" in line for line in lines) and not any("EMA" in w for w in raw.warnings)
