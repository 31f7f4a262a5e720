import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medddpm.config import build_config
from medddpm.errors import InputError
from medddpm.training.autoencoder import describe_folder, held_out_indices, train_autoencoder
from medddpm.training.checkpoint import FILES, list_checkpoints
from medddpm.training.loop import train

TINY_AE = [
    "autoencoder.channels=[8,16,16]",
    "autoencoder.norm_num_groups=4",
    "autoencoder.patch_size=16",
    "autoencoder.discriminator_channels=8",
    "autoencoder.discriminator_layers=1",
    "autoencoder.adversarial_warmup_steps=1",  # the discriminator takes part from step 2
    "autoencoder.held_out=0.25",
    "train.max_steps=4",
    "data.image_size=[16,16,24]",  # patches are cut at random places along the last axis
]


def tiny(*overrides: str):
    return build_config("tiny", [*TINY_AE, *overrides])


def interrupt_at(step: int):
    def on_step(entry) -> None:
        if entry.step == step:
            raise KeyboardInterrupt

    return on_step


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> tuple[Path, Path]:
    """(scans, AE_DIR): 4 steps straight, previews at steps 2 and 4."""
    import numpy as np

    from tests.conftest import blob_volume, write_nifti

    root = tmp_path_factory.mktemp("ae")
    rng = np.random.default_rng(0)
    for i in range(4):
        write_nifti(root / "scans" / f"subject_{i}.nii.gz", blob_volume(rng))
    train_autoencoder(tiny("train.preview_every=2"), root / "scans", root / "ae")
    return root / "scans", root / "ae"


def test_a_run_writes_checkpoints_previews_and_held_out_measures(ae_run):
    scans, ae = ae_run
    assert [s for s, _ in list_checkpoints(ae)] == [2, 4]
    for _, path in list_checkpoints(ae):
        assert sorted(p.name for p in path.iterdir()) == sorted(FILES)  # complete, nothing half-written
        assert json.loads((path / "meta.json").read_text())["kind"] == "autoencoder"
    assert not list((ae / "checkpoints").glob(".*"))
    assert sorted(p.name for p in (ae / "previews").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    rows = list(csv.DictReader((ae / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    report = json.loads((ae / "reconstruction.json").read_text())
    assert report["step"] == 4 and report["held_out"] == 1 and report["perceptual_loss"] == "none"
    held = report["scans"][0]["path"]
    assert Path(held).parent == scans
    assert -1 <= report["mean"]["correlation"] <= 1 and report["mean"]["mae"] > 0
    # the held-out scan is the one held_out_indices names, and dataset.json still lists all four
    assert held.endswith(f"subject_{held_out_indices(4, 0.25)[0]}.nii.gz")


def test_resume_is_exact(ae_run, tmp_path: Path):
    """4 steps straight == 2 steps, Ctrl-C, resumed for 2: autoencoder, EMA, discriminator and
    optimizer moments bit for bit (the discriminator trains from step 2 on)."""
    scans, straight = ae_run
    split = tmp_path / "split"
    cfg = tiny("train.preview_every=0")
    first = train_autoencoder(cfg, scans, split, on_step=interrupt_at(2))
    assert first.interrupted and first.step == 2 and not (split / "reconstruction.json").exists()
    assert train_autoencoder(cfg, scans, split, resume=True).step == 4
    step = "checkpoints/step-00000004"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(straight / step / name), load_file(split / step / name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")
    a = torch.load(straight / step / "training_state.pt", weights_only=True)["discriminator"]
    b = torch.load(split / step / "training_state.pt", weights_only=True)["discriminator"]
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], b["weights"][k], rtol=0, atol=0, msg=k)
    loss = [r["loss"] for r in csv.DictReader((split / "metrics.csv").open())]
    assert loss == [r["loss"] for r in csv.DictReader((straight / "metrics.csv").open())]
    assert (
        json.loads((split / "reconstruction.json").read_text())["mean"]
        == json.loads((straight / "reconstruction.json").read_text())["mean"]
    )


def test_a_diffusion_run_and_an_autoencoder_run_refuse_each_others_folders(ae_run, tiny_run: Path):
    scans, ae = ae_run
    before = sorted(p.name for p in tiny_run.rglob("*"))
    for flags in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(InputError, match="holds a diffusion run, not a autoencoder run"):
            train_autoencoder(tiny(), scans, tiny_run, **flags)
        with pytest.raises(InputError, match="holds a autoencoder run, not a diffusion run"):
            train(build_config("tiny"), scans, ae, **flags)
    assert sorted(p.name for p in tiny_run.rglob("*")) == before


@pytest.mark.parametrize(
    ("overrides", "perceptual", "message"),
    [
        ((), "missing.pt", "perceptual-loss weights not found"),
        ((), "not_weights.pt", "cannot read feature-network weights"),
        ((), "other_net.pt", "not MedicalNet ResNet weights"),
        (("data.image_size=18",), None, "must be a multiple of 4"),
        (("autoencoder.discriminator_layers=3",), None, "too small for a discriminator"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(
    ae_run, tmp_path: Path, overrides, perceptual, message
):
    scans, _ = ae_run
    (tmp_path / "not_weights.pt").write_text("hello")
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(3, 3)}}, tmp_path / "other_net.pt")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "medddpm", "train-autoencoder", str(scans), "--output", str(out)]
    args += ["--config", "tiny"] + [a for o in (*TINY_AE, *overrides) for a in ("--set", o)]
    if perceptual:
        args += ["--perceptual", f"medicalnet:{tmp_path / perceptual}"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.returncode == 2, done.stderr + done.stdout
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0].replace("\n", " "), lines
    assert not out.exists()


def test_info_says_what_an_autoencoder_folder_is(ae_run, tiny_run: Path):
    _, ae = ae_run
    facts = "\n".join(describe_folder(ae))
    assert "autoencoder run" in facts and "16x16x24 -> 4x4x4x6" in facts and "correlation" in facts
    assert describe_folder(tiny_run) is None
