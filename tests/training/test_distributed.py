"""torchrun: `torchrun --nproc-per-node 2 -m medddpm train|sample|train-autoencoder ...` with gloo on CPU.

Each torchrun launch costs two interpreter start-ups (torch + MONAI imports), so the runs are
shared by the tests through module-scoped fixtures: one uninterrupted 2-process run, and one
resumed from its step-2 checkpoint; the sampling test samples the first.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medddpm.config import build_config
from medddpm.runtime import torch_threads
from medddpm.training.checkpoint import FILES, list_checkpoints
from medddpm.training.loop import train
from tests.conftest import blob_volume, write_nifti

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
# Same config for every run here; only the split of each step's 2 volumes over processes varies.
LR = 1e-4
"""Pinned: the tolerance of the comparison below is argued from AdamW's step size lr."""
COMMON = ["--config", "tiny", "--max-steps", str(STEPS), "--checkpoint-every", "2", "--seed", "3"]
COMMON += ["--set", f"train.lr={LR}"]


def torchrun_command(*args: str, nproc: int = 2) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m medddpm ARGS`` (free port, no clash)."""
    launcher = Path(sys.executable).with_name("torchrun")
    cmd = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return cmd + ["--standalone", f"--nproc-per-node={nproc}", "-m", "medddpm", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = torchrun_command(*args)
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def weights(run: Path, step: int, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:08d}" / name)


def metric_rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp") / "scans"
    rng = np.random.default_rng(5)
    for i in range(4):
        write_nifti(folder / f"s{i}.nii.gz", blob_volume(rng))
    return folder


@pytest.fixture(scope="module")
def ddp_run(scans: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """2 processes x batch 1, 4 steps, checkpoints at steps 2 and 4."""
    run = scans.parent / "ddp"
    done = torchrun("train", str(scans), "--output", str(run), "--batch-size", "1", *COMMON)
    assert done.returncode == 0, done.stderr[-3000:]
    return run, done


@pytest.fixture(scope="module")
def resumed_run(ddp_run, scans: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """The same run stopped after its step-2 checkpoint, resumed under torchrun with --max-steps 2+2."""
    run = ddp_run[0].parent / "resumed"
    shutil.copytree(ddp_run[0], run)
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    done = torchrun("train", str(scans), "--output", str(run), "--resume", "--max-steps", str(STEPS))
    assert done.returncode == 0, done.stderr[-3000:]
    return run, done


def test_checkpoints_complete_and_metrics_written_once(ddp_run):
    run, done = ddp_run
    for step in (2, 4):
        folder = run / "checkpoints" / f"step-{step:08d}"
        assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
        assert json.loads((folder / "meta.json").read_text())["step"] == step
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())
    state = torch.load(run / "checkpoints" / "step-00000004" / "training_state.pt", weights_only=True)
    assert state["samples_seen"] == STEPS * 2  # 2 processes x batch 1 per step
    assert [int(r["step"]) for r in metric_rows(run)] == list(range(1, STEPS + 1))  # one row per step
    # only process 0 reports: one summary line, one effective-batch line, no duplicated progress
    assert done.stderr.count("Done:") == 1
    assert done.stderr.count("effective batch 2 (1 x 1 accumulation x 2 processes)") == 1


def test_two_processes_match_one_process_with_the_whole_batch(ddp_run, scans: Path):
    """2 processes x batch 1 == 1 process x batch 2: same samples, same noise, DDP averages the halves.

    The loss is a mean over the batch, so the averaged half-batch gradients equal the full-batch
    gradient up to float32 rounding (~1e-7 relative). AdamW's first steps move each weight by about
    lr * sign(gradient) = 1e-4 (tiny: warm-up 1, lr 1e-4), so a rounding difference could at worst
    flip a near-zero gradient's sign and move a weight by ~2e-4 per step; atol 1e-5 allows rounding
    noise but not one such flip, and not a different batch or noise draw (which changes weights by ~1e-4).
    """
    single = scans.parent / "single"
    overrides = ["train.batch_size=2", f"train.max_steps={STEPS}", "train.checkpoint_every=2", "train.seed=3"]
    overrides.append(f"train.lr={LR}")
    train(build_config("tiny", overrides), scans, single)
    a, b = weights(ddp_run[0], STEPS), weights(single, STEPS)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    losses_ddp = [float(r["loss"]) for r in metric_rows(ddp_run[0])]
    losses_single = [float(r["loss"]) for r in metric_rows(single)]
    np.testing.assert_allclose(losses_ddp, losses_single, rtol=1e-4)


def test_resume_under_torchrun_matches_uninterrupted(ddp_run, resumed_run):
    run, done = resumed_run
    assert "Resuming from" in done.stderr and done.stderr.count("Resuming from") == 1
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(ddp_run[0], STEPS, name), weights(run, STEPS, name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")
    assert [r["loss"] for r in metric_rows(run)] == [r["loss"] for r in metric_rows(ddp_run[0])]


def test_failed_checks_stop_every_process(scans: Path, tmp_path: Path):
    """A run folder refused, found by every process: all exit with the one-line error, none waits."""
    run = tmp_path / "taken"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    done = torchrun("train", str(scans), "--output", str(run), *COMMON, timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("output folder is not empty") == 1, done.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_sampling_shards_match_one_process(ddp_run, tmp_path: Path):
    """2 processes x their share of 3 samples == 1 process x 3 samples, voxel for voxel (seed + i rule)."""
    from medddpm.inference.sample_to_folder import checkpoint_config, sample_to_folder

    run = ddp_run[0]
    common = ["--batch-size", "1", "--steps", "3", "--seed", "7", "--device", "cpu"]
    done = torchrun("sample", str(run), "--output", str(tmp_path / "two"), "-n", "3", *common)
    assert done.returncode == 0, done.stderr[-3000:]
    with torch_threads(1):  # as in each torchrun process: the same kernels, the same rounding
        checkpoint, cfg = checkpoint_config(run)
        settings = cfg.sample.with_flags(batch_size=1, steps=3)
        sample_to_folder(checkpoint, tmp_path / "one", 3, settings, seed=7, device="cpu")
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["world_size"] == 2
    assert [r["seed"] for r in sorted(manifest["samples"], key=lambda r: r["index"])] == [7, 8, 9]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    for i in range(3):
        name = f"sample_{i:04d}.nii.gz"
        a, b = nib.load(tmp_path / "two" / name), nib.load(tmp_path / "one" / name)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj), err_msg=name)
        np.testing.assert_array_equal(a.affine, b.affine)


@pytest.mark.slow
def test_ctrl_c_under_torchrun_stops_every_process_after_the_same_step(scans: Path, tmp_path: Path):
    """torchrun passes Ctrl-C (SIGINT) on to each process, at whatever point each one is; they
    agree to stop after the same step, and the checkpoint written on the way out is consistent."""
    run = tmp_path / "run"
    cmd = torchrun_command("train", str(scans), "--output", str(run), "--batch-size", "1", *COMMON)
    cmd[cmd.index("--max-steps") + 1] = "10000"
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.csv").exists() or len(metric_rows(run)) < 2:  # 2 steps done
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert stderr.count("Interrupted at step") == 1
    (step, folder), *_ = reversed(list_checkpoints(run))
    state = torch.load(folder / "training_state.pt", weights_only=True)
    assert state["step"] == step and state["samples_seen"] == 2 * step
    assert state["scheduler"]["last_epoch"] == step
    assert all(int(s["step"]) == step for s in state["optimizer"]["state"].values())


# ---------------------------------------------------------------------------------------------
# train-autoencoder under torchrun

AE_SETS = [
    "autoencoder.channels=[8,16,16]",
    "autoencoder.norm_num_groups=4",
    "autoencoder.patch_size=16",
    "autoencoder.discriminator_channels=8",
    "autoencoder.discriminator_layers=1",
    "autoencoder.adversarial_warmup_steps=2",  # the discriminator takes part from step 3 on
    "autoencoder.held_out=0.25",
    "data.image_size=[16,16,24]",  # patches are cut at random places along the last axis
]
AE_COMMON = [*COMMON, *(a for s in AE_SETS for a in ("--set", s))]


@pytest.fixture(scope="module")
def ddp_autoencoder(scans: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """2 processes x batch 1, 4 steps, checkpoints at steps 2 and 4."""
    run = scans.parent / "ddp_ae"
    done = torchrun("train-autoencoder", str(scans), "--output", str(run), "--batch-size", "1", *AE_COMMON)
    assert done.returncode == 0, done.stderr[-3000:]
    return run, done


@pytest.mark.slow  # two more torchrun launches of 2 processes each, and a third run
def test_autoencoder_two_processes_match_one_process_with_the_whole_batch(ddp_autoencoder, scans: Path):
    """Until the discriminator joins (step 2), 2 processes x batch 1 == 1 process x batch 2: the same
    patches, the same posterior noise, DDP averaging the halves (tolerance argued as for ``train``)."""
    from medddpm.training.autoencoder import train_autoencoder

    run, done = ddp_autoencoder
    assert done.stderr.count("Done:") == 1 and done.stderr.count("Held-out reconstruction") == 1
    assert json.loads((run / "reconstruction.json").read_text())["step"] == STEPS
    single = scans.parent / "single_ae"
    overrides = [*AE_SETS, "train.batch_size=2", f"train.max_steps={STEPS}", "train.checkpoint_every=2"]
    overrides += ["train.seed=3", f"train.lr={LR}"]
    with torch_threads(1):
        train_autoencoder(build_config("tiny", overrides), scans, single)
    state = torch.load(run / "checkpoints/step-00000004/training_state.pt", weights_only=True)
    assert state["samples_seen"] == STEPS * 2
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(run, 2, name), weights(single, 2, name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=f"{name}:{k}")
    losses = [float(r["loss"]) for r in metric_rows(run)][:2]
    np.testing.assert_allclose(losses, [float(r["loss"]) for r in metric_rows(single)][:2], rtol=1e-4)


@pytest.mark.slow  # two more torchrun launches of 2 processes each, and a third run
def test_autoencoder_resume_under_torchrun_matches_uninterrupted(ddp_autoencoder):
    """Stopped after step 2, resumed for steps 3-4 (the discriminator's): bit for bit."""
    run = ddp_autoencoder[0].parent / "resumed_ae"
    shutil.copytree(ddp_autoencoder[0], run)
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    (run / "reconstruction.json").unlink()
    done = torchrun("train-autoencoder", str(run.parent / "scans"), "--output", str(run), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("Resuming from") == 1
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(ddp_autoencoder[0], STEPS, name), weights(run, STEPS, name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")
    states = [
        torch.load(r / "checkpoints/step-00000004/training_state.pt", weights_only=True)["discriminator"]
        for r in (ddp_autoencoder[0], run)
    ]
    for k, v in states[0]["weights"].items():
        torch.testing.assert_close(v, states[1]["weights"][k], rtol=0, atol=0, msg=k)
    assert [r["loss"] for r in metric_rows(run)] == [r["loss"] for r in metric_rows(ddp_autoencoder[0])]


def _discriminator_step_on(rank: int, world: int, store: str, out: str) -> None:
    """One process of ``test_every_process_takes_the_same_discriminator_step``."""
    from types import SimpleNamespace

    from medddpm.config import AutoencoderConfig
    from medddpm.models.autoencoder import build_discriminator
    from medddpm.runtime import Distributed
    from medddpm.training.autoencoder import discriminator_step

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial weights on both
    d = build_discriminator(AutoencoderConfig(discriminator_channels=8, discriminator_layers=1))
    learner = SimpleNamespace(
        discriminator=d,
        d_optimizer=torch.optim.Adam(d.parameters(), lr=1e-2),
        d_scaler=torch.amp.GradScaler("cpu", enabled=False),
    )
    g = torch.Generator().manual_seed(rank + 1)  # each process its own patches
    pairs = [(torch.randn(1, 1, 16, 16, 16, generator=g), torch.randn(1, 1, 16, 16, 16, generator=g))]
    tc = build_config("tiny").train
    discriminator_step(learner, pairs, tc, torch.device("cpu"), "fp32", Distributed(rank, world))
    torch.save(d.state_dict(), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_every_process_takes_the_same_discriminator_step(tmp_path: Path):
    """Two processes, each with its own patches: after one discriminator step (gradients averaged,
    BatchNorm statistics from process 0) both hold the same discriminator, and it moved."""
    torch.multiprocessing.spawn(
        _discriminator_step_on, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True
    )
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    from medddpm.config import AutoencoderConfig
    from medddpm.models.autoencoder import build_discriminator

    torch.manual_seed(0)
    initial = build_discriminator(
        AutoencoderConfig(discriminator_channels=8, discriminator_layers=1)
    ).state_dict()
    assert any((a[k].float() - initial[k].float()).abs().max() > 1e-4 for k in a if a[k].is_floating_point())
