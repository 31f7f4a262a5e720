import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medddpm.config import build_config
from medddpm.errors import InputError, TrainingAborted
from medddpm.training.checkpoint import list_checkpoints, open_checkpoint, resolve_checkpoint
from medddpm.training.loop import batch_indices, train
from tests.conftest import blob_volume, write_nifti


def tiny(*overrides: str):
    return build_config("tiny", list(overrides))


def weights(run: Path, step: int, name: str) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:08d}" / name)


def interrupt_at(step: int):
    """An on_step callback that presses Ctrl-C once the loop has finished ``step``."""

    def on_step(entry) -> None:
        if entry.step == step:
            raise KeyboardInterrupt

    return on_step


@pytest.mark.parametrize(
    "options",
    [
        (),
        ("model.space=wavelet", "diffusion.process=rflow", "diffusion.rflow_shift=2"),
        ("model.space=wavelet", "diffusion.prediction=v", "diffusion.min_snr_gamma=5"),
    ],
    ids=["pixel-ddpm", "wavelet-rflow", "wavelet-v-minsnr"],
)
def test_resume_gives_identical_weights(scan_dir: Path, tmp_path: Path, options):
    """4 steps straight == 2 steps, interrupted (Ctrl-C writes a checkpoint), then resumed for 2 more.

    The LR schedule spans max_steps, so both runs are configured for 4 steps.
    """
    straight, split = tmp_path / "straight", tmp_path / "split"
    cfg = tiny("train.max_steps=4", "train.checkpoint_every=3", *options)
    train(cfg, scan_dir, straight)
    first = train(cfg, scan_dir, split, on_step=interrupt_at(2))
    assert first.interrupted and first.step == 2 and first.checkpoint.name == "step-00000002"
    assert train(cfg, scan_dir, split, resume=True).step == 4
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(straight, 4, name), weights(split, 4, name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")
    rows = list(csv.DictReader((split / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    straight_rows = list(csv.DictReader((straight / "metrics.csv").open()))
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows]


def test_warm_up_then_resume_with_more_steps_equals_one_run(scan_dir: Path, tmp_path: Path):
    """The warm-up's learning rate does not depend on max_steps, and a resumed run takes its new
    max_steps: training the warm-up alone, then resuming for more steps, gives one run's weights
    (what medddpm demo does to time a machine before choosing its steps)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    options = ("train.warmup_steps=3", "train.min_lr_ratio=0.1", "train.checkpoint_every=100")
    train(tiny("train.max_steps=6", *options), scan_dir, straight)
    assert train(tiny("train.max_steps=3", *options), scan_dir, split).step == 3
    assert train(tiny("train.max_steps=6", *options), scan_dir, split, resume=True).step == 6
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(straight, 6, name), weights(split, 6, name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")
    lrs = [float(r["lr"]) for r in csv.DictReader((split / "metrics.csv").open())]
    assert lrs[-1] == pytest.approx(0.1 * tiny().train.lr)  # the decay ran to its end


def test_stop_after_pauses_on_the_schedule_of_max_steps_and_resumes_exactly(scan_dir: Path, tmp_path: Path):
    """stop_after=3 of 6 steps: a checkpoint at step 3, learning rates those of the 6-step run (not a
    decay to its end at 3), and resuming gives the uninterrupted run's weights (what medddpm demo does
    to time a machine again part-way)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    options = ("train.warmup_steps=1", "train.min_lr_ratio=0.1", "train.checkpoint_every=100")
    cfg = tiny("train.max_steps=6", "train.preview_every=5", "train.preview_steps=2", *options)
    train(cfg, scan_dir, straight)
    paused = train(cfg, scan_dir, split, stop_after=3)
    assert (paused.step, paused.interrupted, paused.checkpoint.name) == (3, False, "step-00000003")
    assert not list(split.glob("previews/*.png"))  # a pause is not the end of a run: no preview
    lrs = [float(r["lr"]) for r in csv.DictReader((split / "metrics.csv").open())]
    straight_lrs = [float(r["lr"]) for r in csv.DictReader((straight / "metrics.csv").open())]
    assert lrs == straight_lrs[:3] and lrs[-1] > 0.5 * cfg.train.lr
    assert train(cfg, scan_dir, split, resume=True).step == 6
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(straight, 6, name), weights(split, 6, name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")
    assert sorted(p.name for p in split.glob("previews/*.png")) == ["step-00000005.png", "step-00000006.png"]


def test_run_folder_contents(scan_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = train(tiny("train.max_steps=3", "train.checkpoint_every=1", "train.keep_last=2"), scan_dir, run)
    assert result.step == 3
    assert [s for s, _ in list_checkpoints(run)] == [2, 3]  # keep_last
    ckpt = open_checkpoint(resolve_checkpoint("latest", run))
    assert ckpt.step == 3 and ckpt.config.train.max_steps == 3
    assert ckpt.meta["output_spacing"] == [2.0, 2.5, 3.0]
    state = ckpt.training_state()  # loads with weights_only=True
    assert state["step"] == 3 and "optimizer" in state
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())
    for name in ("config.yaml", "dataset.json", "metrics.csv"):
        assert (run / name).is_file()
    assert json.loads((run / "dataset.json").read_text())["n_used"] == 4
    # the EMA moved away from the raw weights but not far
    model, ema = weights(run, 3, "model.safetensors"), weights(run, 3, "ema.safetensors")
    assert any(not torch.equal(model[k], ema[k]) for k in model)


def test_refuses_non_empty_run_dir(scan_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="--resume"):
        train(tiny(), scan_dir, run)
    assert (run / "keep.txt").read_text() == "mine"


def test_overwrite_starts_again_and_keeps_other_files(scan_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(tiny("train.max_steps=2"), scan_dir, run)
    (run / "notes.txt").write_text("mine")
    train(tiny("train.max_steps=1", "train.checkpoint_every=1"), scan_dir, run, overwrite=True)
    assert [s for s, _ in list_checkpoints(run)] == [1]
    assert (run / "notes.txt").read_text() == "mine"


def test_resume_refuses_a_changed_model(scan_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(tiny("train.max_steps=2"), scan_dir, run)
    with pytest.raises(InputError, match="model.channels"):
        train(tiny("train.max_steps=4", "model.channels=[16, 16]"), scan_dir, run, resume=True)


def test_preflight_failure_and_skip_invalid(scan_dir: Path, tmp_path: Path):
    (scan_dir / "text.nii.gz").write_text("not a scan")
    write_nifti(scan_dir / "nan.nii.gz", np.full((6, 6, 6), np.nan, np.float32))
    with pytest.raises(InputError) as e:
        train(tiny(), scan_dir, tmp_path / "a")
    assert "text.nii.gz" in str(e.value) and "nan.nii.gz" in str(e.value)
    result = train(tiny("train.max_steps=1"), scan_dir, tmp_path / "b", skip_invalid=True)
    record = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert result.step == 1 and record["n_used"] == 4 and record["n_skipped"] == 2


def test_nonfinite_losses_abort_with_advice(scan_dir: Path, tmp_path: Path):
    with pytest.raises(TrainingAborted, match="fp32|lower"):
        train(
            tiny("train.lr=1e30", "train.max_steps=40", "train.max_nonfinite=3", "train.grad_clip=0"),
            scan_dir,
            tmp_path / "run",
        )
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert int(rows[-1]["skipped_nonfinite"]) >= 1


def test_gradient_accumulation_and_checkpointing_run(scan_dir: Path, tmp_path: Path):
    cfg = tiny(
        "train.max_steps=2",
        "train.grad_accum=2",
        "model.gradient_checkpointing=true",
        "train.preview_every=2",
        "train.preview_num=2",
        "train.preview_steps=2",
    )
    lines: list[str] = []
    train(cfg, scan_dir, tmp_path / "run", log=lines.append)
    assert (tmp_path / "run" / "previews" / "step-00000002.png").stat().st_size > 1000
    # Two steps in, the preview's EMA weights are still mostly the first step's: the log says so.
    assert [line for line in lines if line.startswith("warning: preview at step 2: the EMA weights")]


@pytest.mark.slow  # torch.compile's inductor builds C++ kernels: ~2 min on 2 CPU cores
def test_compiled_training_on_cpu_takes_the_eager_steps(scan_dir: Path, tmp_path: Path):
    """train.compile=true runs on CPU and gives the same losses and weights as eager mode (float
    rounding apart), saved under the model's own names (not the compiled wrapper's ``_orig_mod.``)."""
    from medddpm.runtime import torch_threads

    runs = {}
    with torch_threads(1):
        for mode in ("eager", "compiled"):
            # lr 1e-4: the tolerances below are argued for small updates; at the default 2e-3 Adam turns
            # float-rounding differences in near-zero gradients into full-size steps.
            cfg = tiny(
                "train.max_steps=2", "train.checkpoint_every=2", "train.lr=1e-4",
                f"train.compile={mode == 'compiled'}",
            )  # fmt: skip
            train(cfg, scan_dir, tmp_path / mode)
            runs[mode] = tmp_path / mode
    losses = {
        m: [float(r["loss"]) for r in csv.DictReader((run / "metrics.csv").open())] for m, run in runs.items()
    }
    assert len(losses["compiled"]) == 2
    np.testing.assert_allclose(losses["compiled"], losses["eager"], rtol=1e-4)
    for name in ("model.safetensors", "ema.safetensors"):
        eager, compiled = weights(runs["eager"], 2, name), weights(runs["compiled"], 2, name)
        assert compiled.keys() == eager.keys()
        for k in eager:
            torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-6, msg=f"{name}:{k}")
    assert open_checkpoint(resolve_checkpoint("latest", runs["compiled"])).config.train.compile


def test_foreground_crop_with_pad_crop_trains_at_the_scans_voxel_size(tmp_path: Path):
    """data.foreground_crop before the default pad_crop (the brain-mri-64 recipe): training runs on
    scans larger than image_size, and cropping keeps each scan's voxel size (no resampling)."""
    rng = np.random.default_rng(0)
    for i in range(2):
        write_nifti(tmp_path / "scans" / f"s{i}.nii.gz", blob_volume(rng, (30, 28, 26)))
    result = train(
        tiny("train.max_steps=1", "data.foreground_crop=true"), tmp_path / "scans", tmp_path / "run"
    )
    assert result.step == 1
    loss = float(next(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))["loss"])
    assert np.isfinite(loss)
    record = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert [f["learnt_spacing"] for f in record["files"]] == [[2.0, 2.5, 3.0]] * 2
    assert record["output_spacing"] == [2.0, 2.5, 3.0]


def test_batches_cover_each_epoch_once():
    seen = [i for b in range(5) for i in batch_indices(b * 2, 2, 10, seed=3)]
    assert sorted(seen) == list(range(10))
    assert batch_indices(0, 2, 10, seed=3) != batch_indices(0, 2, 10, seed=4)


def test_condition_dropout_drops_all_together_or_each_alone():
    from medddpm.training.loop import condition_dropout

    known = torch.ones(4000, 3, dtype=torch.bool)
    assert torch.equal(condition_dropout(known, 0, 0, 0.0, 0.0), known)
    assert not condition_dropout(known, 0, 0, 1.0, 0.0).any()
    kept = condition_dropout(known, 0, 0, 0.2, 0.3)
    all_dropped = (~kept).all(dim=1).float().mean()
    # P(all dropped) = p_all + (1 - p_all) p_each^3; P(one kept) = (1 - p_all)(1 - p_each)
    assert all_dropped == pytest.approx(0.2 + 0.8 * 0.3**3, abs=0.02)
    assert kept.float().mean() == pytest.approx(0.8 * 0.7, abs=0.02)
    # A pure function of (seed, stream position): resuming draws the same; unknown stays unknown.
    assert torch.equal(condition_dropout(known[10:20], 0, 10, 0.2, 0.3), kept[10:20])
    assert not condition_dropout(torch.zeros(5, 3, dtype=torch.bool), 0, 0, 0.0, 0.0).any()


OLD_DEFAULTS = [
    "diffusion.prediction=eps",
    "diffusion.schedule=linear",
    "train.lr=1e-4",
    "train.warmup_steps=500",
    "train.ema_decay=0.999",
    "train.ema_warmup=false",
    "sample.sampler=dpm++",
    "sample.steps=25",
]
"""The recipe of the defaults before train.ema_warmup existed."""


def cli(*args: str) -> None:
    from medddpm.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        assert e.code in (0, None), f"medddpm {' '.join(args)} exited with {e.code}"


def as_written_before_ema_warmup(run: Path) -> None:
    """Remove train.ema_warmup from the run's config.yaml and every checkpoint's meta.json, as the
    code of the time wrote them."""
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"].pop("ema_warmup", None)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for _, ckpt in list_checkpoints(run):
        meta = json.loads((ckpt / "meta.json").read_text())
        meta["config"]["train"].pop("ema_warmup", None)
        (ckpt / "meta.json").write_text(json.dumps(meta))


def test_a_run_of_the_old_defaults_resumes_and_samples_as_it_was_trained(scan_dir: Path, tmp_path: Path):
    """A run trained before train.ema_warmup existed (its files lack the field) reads as trained without
    warm-up: `train --resume` with no config continues it bit for bit like an uninterrupted old run, and
    `sample` runs its own eps / dpm++-25 recipe."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    cfg = tiny(*OLD_DEFAULTS, "train.max_steps=4", "train.checkpoint_every=2")
    train(cfg, scan_dir, straight)
    train(
        tiny(*OLD_DEFAULTS, "train.max_steps=4", "train.checkpoint_every=2"),
        scan_dir,
        split,
        on_step=interrupt_at(2),
    )
    as_written_before_ema_warmup(split)
    assert open_checkpoint(resolve_checkpoint("latest", split)).config.train.ema_warmup is False
    cli("train", str(scan_dir), "--output", str(split), "--resume")
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(straight, 4, name), weights(split, 4, name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")
    as_written_before_ema_warmup(split)
    cli("sample", str(split), "--output", str(tmp_path / "out"), "--num", "1")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["sampler"], manifest["steps"]) == ("dpm++", 25)
    assert manifest["config"]["diffusion"]["prediction"] == "eps"
    assert manifest["config"]["train"]["ema_warmup"] is False
