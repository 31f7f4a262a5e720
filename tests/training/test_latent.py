"""Diffusion in an autoencoder's latent space: the cache holds mu, the scale factor saved is the one
used, resume is exact, and bad autoencoders exit 2 with one line."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medddpm.config import build_config, load_config
from medddpm.data.transforms import build_dataset
from medddpm.errors import InputError
from medddpm.models.autoencoder import decode_tiled, file_sha256, load_autoencoder_file
from medddpm.models.spaces import AUTOENCODER_FILE, config_space
from medddpm.training.autoencoder import train_autoencoder
from medddpm.training.latent import LATENT_CACHE, scale_factor
from medddpm.training.loop import train

AE = [  # a 2-level autoencoder (2x downsampling) of 8-16 channels, 2 steps
    "autoencoder.channels=[8,16]",
    "autoencoder.norm_num_groups=4",
    "autoencoder.patch_size=16",
    "autoencoder.adversarial_weight=0",
    "train.max_steps=2",
]
ROOT = Path(__file__).parents[2]


def latent_cfg(ae_dir: Path, *overrides: str):
    return build_config("tiny", ["model.space=latent", f"latent.autoencoder={ae_dir}", *overrides])


def interrupt_at(step: int):
    def on_step(entry) -> None:
        if entry.step == step:
            raise KeyboardInterrupt

    return on_step


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(scans, AE_DIR, another AE_DIR, RUN_DIR): two autoencoders, and 4 latent diffusion steps."""
    from tests.conftest import blob_volume, write_nifti

    root = tmp_path_factory.mktemp("latent")
    rng = np.random.default_rng(0)
    for i in range(4):
        write_nifti(root / "scans" / f"subject_{i}.nii.gz", blob_volume(rng))
    train_autoencoder(build_config("tiny", AE), root / "scans", root / "ae")
    train_autoencoder(build_config("tiny", [*AE, "train.seed=7"]), root / "scans", root / "ae2")
    train(latent_cfg(root / "ae"), root / "scans", root / "run")
    return root / "scans", root / "ae", root / "ae2", root / "run"


def preprocessed(scans: Path, run: Path) -> torch.Tensor:
    """The run's scans as training saw them, [N, 1, *image_size] in [-1, 1], dataset.json's order."""
    files = [f["path"] for f in json.loads((run / "dataset.json").read_text())["files"]]
    dataset = build_dataset(load_config(run / "config.yaml").data, files, None, 0)
    return torch.stack([item["image"] for item in dataset])


def test_the_latent_cache_holds_the_posterior_mean(latent_run):
    scans, ae_dir, _, run = latent_run
    cfg = load_config(run / "config.yaml")
    cache = load_file(run / LATENT_CACHE)
    assert sorted(cache) == [f"scan_{i:05d}" for i in range(4)]
    autoencoder = load_autoencoder_file(run / AUTOENCODER_FILE, cfg.autoencoder)
    x = preprocessed(scans, run)
    with torch.no_grad():
        mu, sigma = autoencoder.encode(x)  # the whole-volume posterior: slab-wise encoding is exact
    cached = torch.stack([cache[f"scan_{i:05d}"] for i in range(4)])
    assert cached.shape == (4, 4, 8, 8, 8)
    torch.testing.assert_close(cached, mu, rtol=0, atol=1e-5)
    torch.manual_seed(0)
    assert (cached - autoencoder.sampling(mu, sigma)).abs().max() > 1e-3  # a sample would differ


def test_the_scale_factor_saved_is_the_one_sampling_uses(latent_run):
    """MONAI's 3D LDM tutorial trains with 1/std(z) and samples with 1.0: here the factor is computed
    once, saved in config.yaml and every checkpoint, and sampling decodes z / that factor."""
    from medddpm.inference.sample_to_folder import ConditionRequest, _plan

    _, ae_dir, _, run = latent_run
    cache = load_file(run / LATENT_CACHE)
    expected = 1 / np.std(np.concatenate([v.numpy().ravel().astype(np.float64) for v in cache.values()]))
    saved = load_config(run / "config.yaml").latent
    assert saved.scale_factor == pytest.approx(expected, rel=1e-12) and expected != pytest.approx(
        1.0, abs=0.05
    )
    assert saved.autoencoder_sha256 == file_sha256(ae_dir / "checkpoints/step-00000002/ema.safetensors")
    assert file_sha256(run / AUTOENCODER_FILE) == saved.autoencoder_sha256
    for step in ("step-00000002", "step-00000004"):
        meta = json.loads((run / "checkpoints" / step / "meta.json").read_text())
        assert meta["config"]["latent"]["scale_factor"] == saved.scale_factor
    plan = _plan(run, 1, "latest", None, 0, True, "fp32", "cpu", "nii.gz", ConditionRequest())
    assert plan.space.scale_factor == saved.scale_factor == plan.recipe["scale_factor"]
    z = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    autoencoder = load_autoencoder_file(run / AUTOENCODER_FILE, load_config(run / "config.yaml").autoencoder)
    with torch.no_grad():
        torch.testing.assert_close(plan.space.decode(z), autoencoder.decode(z / saved.scale_factor))
    assert (plan.space.decode(z) - decode_tiled(autoencoder, z)).abs().max() > 1e-3
    assert scale_factor([torch.tensor([1.0, 3.0]), torch.tensor([5.0])], 1) == 1.0  # the first volume only


def test_resume_is_exact_and_reuses_the_saved_factor(latent_run, tmp_path: Path):
    scans, ae_dir, _, straight = latent_run
    split = tmp_path / "split"
    first = train(latent_cfg(ae_dir), scans, split, on_step=interrupt_at(2))
    assert first.interrupted and first.step == 2
    (split / LATENT_CACHE).unlink()  # re-encoded on resume; the saved factor is kept, not recomputed
    assert train(load_config(split / "config.yaml"), scans, split, resume=True).step == 4
    step = "checkpoints/step-00000004"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(straight / step / name), load_file(split / step / name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")
    loss = [r["loss"] for r in csv.DictReader((split / "metrics.csv").open())]
    assert loss == [r["loss"] for r in csv.DictReader((straight / "metrics.csv").open())]


def test_the_space_without_its_run_has_a_shape_and_refuses_to_encode(latent_run):
    _, ae_dir, _, run = latent_run
    cfg = load_config(run / "config.yaml")
    space = config_space(cfg)
    assert (space.channels, space.latent_size((16, 16, 16)), space.clip) == (4, (8, 8, 8), None)
    with pytest.raises(InputError, match="needs its run's autoencoder"):
        space.encode(torch.zeros(1, 1, 16, 16, 16))


def _run_cli(*args: str) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-m", "medddpm", *args], capture_output=True, text=True, cwd=ROOT)
    return done.returncode, [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("scans", "not an autoencoder folder: no checkpoints/"),
        ("empty_ae", "no complete checkpoint"),
        ("diffusion_run", "not an autoencoder folder: it holds a diffusion run"),
        ("channels", "model.latent_channels is 2 but the autoencoder has 4 latent channels"),
        ("resume_other", "this run was trained with another autoencoder"),
    ],
)
def test_bad_autoencoders_exit_2_with_one_line_and_write_nothing(latent_run, tmp_path: Path, case, message):
    scans, ae_dir, other, run = latent_run
    out, extra = tmp_path / "out", []
    autoencoder = {"scans": scans, "diffusion_run": run, "resume_other": other}.get(case, ae_dir)
    if case == "empty_ae":
        autoencoder = tmp_path / "ae"
        (autoencoder / "checkpoints").mkdir(parents=True)
        shutil.copy(ae_dir / "config.yaml", autoencoder)
    if case == "channels":
        extra = ["--set", "model.latent_channels=2"]
    if case == "resume_other":
        shutil.copytree(run, out)
        extra = ["--resume", "--max-steps", "6"]
    before = _listing(out) if out.exists() else None
    code, lines = _run_cli(
        "train",
        str(scans),
        "--output",
        str(out),
        "--config",
        "tiny",
        "--autoencoder",
        str(autoencoder),
        *extra,
    )
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert (_listing(out) if out.exists() else None) == before


def test_sampling_refuses_autoencoder_weights_other_than_the_run_was_trained_with(latent_run, tmp_path: Path):
    _, _, other, run = latent_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.copy(other / "checkpoints/step-00000002/ema.safetensors", copy / AUTOENCODER_FILE)
    code, lines = _run_cli(
        "sample", str(copy), "--output", str(tmp_path / "out"), "--num", "1", "--steps", "2"
    )
    assert code == 2 and len(lines) == 1 and "differ from the ones the run was trained with" in lines[0], (
        lines
    )
    assert not (tmp_path / "out").exists()


def test_dry_run_with_an_autoencoder_estimates_both_stages_from_its_folder(
    latent_run, tmp_path: Path, capsys
):
    """``train --autoencoder AE_DIR --dry-run`` checks the folder, takes its autoencoder section
    (2 levels: 2x downsampling, not the config's 4x) and prints the U-Net's training estimate at the
    latent grid and the sampling estimate with tiled decoding; it writes nothing. A folder that is not
    an autoencoder's is the same one-line error as without --dry-run."""
    from medddpm.cli import main

    scans, ae_dir, _, run = latent_run
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                str(scans),
                "--output",
                str(out),
                "--config",
                "tiny",
                "--autoencoder",
                str(ae_dir),
                "--dry-run",
            ]
        )
        raise SystemExit(0)
    err = " ".join(capsys.readouterr().err.split())
    assert not e.value.code, err
    assert "U-Net in latent space: 4 channel(s) at 8x8x8 voxels" in err  # 16³ volumes, 2x per side
    assert f"autoencoder from {ae_dir.resolve()}: channels [8, 16], 4 latent channels, 2x" in err
    assert "decoded layer by layer in slabs of at most 65536 output voxels" in err
    assert "largest activation held whole: 16 channels at 16x16x16 per volume" in err
    assert "estimated sampling peak" in err
    assert not out.exists()

    code, lines = _run_cli(
        "train", str(scans), "--output", str(out), "--config", "tiny", "--autoencoder", str(run), "--dry-run"
    )
    assert code == 2 and len(lines) == 1 and "not an autoencoder folder" in lines[0], lines
    assert not out.exists()
