"""The learner and its resume contract: Learner.state_dict() / load_state_dict(), TrainingState, files."""

from __future__ import annotations

import math
import random
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from medddpm.config import build_config
from medddpm.diffusion.schedule import NoiseSchedule
from medddpm.errors import InputError
from medddpm.runtime import Distributed, seed_everything, torch_threads
from medddpm.training.checkpoint import FILES, STATE_FILES, open_checkpoint, save_checkpoint
from medddpm.training.learner import (
    Learner,
    TrainingState,
    build_learner,
    ema_decay_at,
    lr_lambda,
    read_learner_state,
)
from medddpm.training.loop import train_step

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """The same kernels (and rounding) for the learners compared bit for bit."""
    with torch_threads(1):
        yield


def tiny(*overrides: str):
    return build_config("tiny", ["train.max_steps=10", *overrides])


def toy_dataset(n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, 16, 16, 16, generator=g) * 2 - 1} for _ in range(n)]


def learner_for(cfg, seed: int) -> Learner:
    seed_everything(seed)
    return build_learner(cfg, CPU, "fp32", Distributed())


def step(learner: Learner, cfg, dataset) -> tuple[float, float]:
    schedule = NoiseSchedule.from_config(cfg.diffusion)
    loss, grad_norm = train_step(
        learner, schedule, dataset, learner.samples_seen, cfg.train, Distributed(), CPU, "fp32"
    )
    learner.count_step(loss, grad_norm)
    return loss, grad_norm


def global_draws() -> tuple:
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def assert_same_tensors(a, b, where: str = "") -> None:
    """Equal nested dicts/lists of tensors and plain values, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_state_round_trips_through_a_checkpoint_into_a_fresh_learner(tmp_path: Path):
    """Save after 2 steps, restore into a learner built from another seed: the same state tensors,
    the same global random draws, and a third step identical bit for bit to the original's."""
    cfg, dataset = tiny("train.grad_accum=2"), toy_dataset()
    original = learner_for(cfg, seed=0)
    for _ in range(2):
        step(original, cfg, dataset)
    path = save_checkpoint(tmp_path, original.step, original.state_dict(), {"config": cfg.to_dict()}, 2)
    draws = global_draws()
    loss = step(original, cfg, dataset)

    restored = learner_for(cfg, seed=1)  # other initial weights and RNG states: all overwritten
    restored.load_state_dict(read_learner_state(open_checkpoint(path), cfg))
    assert (restored.step, restored.samples_seen, restored.skipped_nonfinite) == (2, 2 * 2 * 2, 0)
    assert global_draws() == draws
    assert step(restored, cfg, dataset) == loss
    assert_same_tensors(original.state_dict(), restored.state_dict())  # weights, EMA, AdamW, counters


def test_restored_state_matches_the_saved_tensors():
    cfg, dataset = tiny(), toy_dataset()
    original = learner_for(cfg, seed=0)
    for _ in range(3):
        step(original, cfg, dataset)
    saved = original.state_dict()
    fresh = learner_for(cfg, seed=5)
    fresh.load_state_dict(saved)
    restored = fresh.state_dict()
    # The RNG states are read when state_dict() is called: the same, since nothing drew in between.
    assert_same_tensors(saved, restored)
    assert restored["training_state"]["scheduler"]["last_epoch"] == 3


def test_resume_keys_are_defined_once(tiny_run: Path):
    """training_state.pt holds exactly TrainingState's fields, in order; state_dict() keys are the
    checkpoint's state files; a checkpoint folder is those files and meta.json."""
    keys = [f.name for f in fields(TrainingState)]
    checkpoint = tiny_run / "checkpoints" / "step-00000002"
    on_disk = torch.load(checkpoint / "training_state.pt", weights_only=True)
    assert list(on_disk) == keys
    state = learner_for(tiny(), seed=0).state_dict()
    assert list(state["training_state"]) == keys
    assert list(state) == list(STATE_FILES)
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(FILES)


def test_checkpoints_without_samples_seen_imply_it_from_the_step():
    cfg = tiny("train.batch_size=3", "train.grad_accum=2")
    state = learner_for(cfg, seed=0).state_dict()
    state["training_state"] = {**state["training_state"], "step": 5}
    del state["training_state"]["samples_seen"]  # written before the field existed
    learner = learner_for(cfg, seed=0)
    learner.load_state_dict(state)
    assert learner.samples_seen == 5 * 3 * 2


def test_a_training_state_without_its_fields_is_refused(tmp_path: Path):
    with pytest.raises(InputError, match=r"training_state.pt: training state lacks optimizer, scheduler"):
        TrainingState.from_dict({"step": 2, "rng": {}}, tmp_path / "training_state.pt")
    with pytest.raises(InputError, match="lacks step"):
        TrainingState.from_dict([1, 2, 3])


def test_count_step_counts_skipped_steps_and_stream_positions():
    learner = learner_for(tiny("train.batch_size=2", "train.grad_accum=3"), seed=0)
    assert learner.count_step(0.5, 1.0) is True
    assert learner.count_step(float("nan"), 1.0) is False
    assert learner.count_step(0.5, float("inf")) is False
    assert (learner.step, learner.samples_seen, learner.skipped_nonfinite) == (3, 18, 2)


def test_lr_warmup_then_cosine():
    f = lr_lambda(10, 110, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------
# Equivalences the README promises


def weights_of(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


def test_batch_two_equals_batch_one_with_two_accumulated():
    """The same stream positions, the same (t, eps) per sample: one step of batch 2 and one of batch 1
    x accumulation 2 give the same loss and the same weights (float rounding apart). The LR is pinned
    at 1e-4: AdamW's first steps move a weight by about lr x sign(gradient), so at a higher LR a
    rounding-level gradient near 0 can flip sign and move a weight by more than the tolerance."""
    dataset = toy_dataset()
    whole = tiny("train.batch_size=2", "train.lr=1e-4")
    split = tiny("train.batch_size=1", "train.grad_accum=2", "train.lr=1e-4")
    a, b = learner_for(whole, seed=0), learner_for(split, seed=0)
    for _ in range(2):
        loss_a, _ = step(a, whole, dataset)
        loss_b, _ = step(b, split, dataset)
        assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert a.samples_seen == b.samples_seen == 4
    for k, w in weights_of(a).items():
        torch.testing.assert_close(weights_of(b)[k], w, rtol=1e-5, atol=1e-6, msg=k)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    from medddpm.diffusion.schedule import diffusion_loss
    from medddpm.models.unet import build_unet

    x0 = torch.stack([d["image"] for d in toy_dataset(2)])
    grads, losses = [], []
    for checkpointing in (False, True):
        cfg = tiny(f"model.gradient_checkpointing={str(checkpointing).lower()}")
        torch.manual_seed(0)
        model = build_unet(cfg.model)
        assert type(model.middle_block).__name__.startswith("Checkpointed") == checkpointing
        loss = diffusion_loss(
            model, NoiseSchedule.from_config(cfg.diffusion), x0, torch.Generator().manual_seed(3)
        )
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert losses[0] == losses[1]
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-5, atol=1e-7, msg=n)


def test_channels_last_and_contiguous_take_the_same_step():
    cfg, dataset = tiny("train.batch_size=2"), toy_dataset()
    learners = []
    for memory_format in (torch.contiguous_format, torch.channels_last_3d):
        seed_everything(0)
        learner = build_learner(cfg, CPU, "fp32", Distributed(), memory_format=memory_format)
        step(learner, cfg, dataset)
        learners.append(learner)
    contiguous, channels_last = learners
    conv = next(p for p in channels_last.model.parameters() if p.ndim == 5)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)
    for k, w in weights_of(contiguous).items():
        torch.testing.assert_close(weights_of(channels_last)[k], w, rtol=1e-5, atol=1e-6, msg=k)


def test_flash_attention_gives_the_same_loss_and_gradients_as_plain_attention():
    """model.use_flash_attention (torch's scaled_dot_product_attention, on CPU too) computes the same
    attention as MONAI's explicit softmax(QK^T)V. The U-Net's attention output projections start at
    zero (and AdamW's first step hardly depends on the gradients' size), so the weights are perturbed
    first and the gradients compared: attention then shapes the loss and every gradient."""
    from medddpm.diffusion.schedule import diffusion_loss
    from medddpm.models.unet import build_unet

    x0 = torch.stack([d["image"] for d in toy_dataset(2)])
    grads, losses = [], []
    for flash in ("false", "true"):
        cfg = tiny(f"model.use_flash_attention={flash}")
        torch.manual_seed(0)
        model = build_unet(cfg.model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        loss = diffusion_loss(
            model, NoiseSchedule.from_config(cfg.diffusion), x0, torch.Generator().manual_seed(3)
        )
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_ema_follows_its_formula():
    """torch's AveragedModel with decay d: the first update copies the weights, then each step
    e <- d e + (1 - d) w. Checked against that recursion over 4 steps at d = 0.8."""
    cfg, dataset = tiny("train.ema_decay=0.8", "train.lr=1e-2", "train.ema_warmup=false"), toy_dataset()
    learner = learner_for(cfg, seed=0)
    expected = None
    for _ in range(4):
        step(learner, cfg, dataset)
        w = weights_of(learner)
        expected = w if expected is None else {k: 0.8 * expected[k] + 0.2 * w[k] for k in w}
    ema = learner.ema.module.state_dict()
    assert int(learner.ema.n_averaged) == 4
    assert any(not torch.allclose(ema[k], w[k]) for k in w)  # the EMA lags the weights
    for k in expected:
        torch.testing.assert_close(ema[k], expected[k], rtol=1e-6, atol=1e-7, msg=k)


def diffusers_decay(optimization_step: int, decay: float) -> float:
    """diffusers' EMAModel.get_decay (use_ema_warmup=False, update_after_step=0, min_decay=0), written
    out from its source: step = max(0, optimization_step - 1); min(decay, (1 + step) / (10 + step))."""
    step = max(0, optimization_step - 1)
    return min(decay, (1 + step) / (10 + step))


def test_ema_warmup_decay_is_diffusers():
    """Update k (k >= 2; the first copies) has taken in n = k - 1 updates: its decay is diffusers' at
    optimization step k. Hand values: 0.1 at n = 0, 0.5 at n = 8, capped at ema_decay from n = 8990."""
    for n in (0, 1, 8, 80, 889, 8989, 8990, 50_000):
        assert ema_decay_at(n, 0.999, True) == pytest.approx(diffusers_decay(n + 1, 0.999), abs=1e-15)
    assert ema_decay_at(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay_at(8, 0.999, True) == pytest.approx(0.5)
    assert ema_decay_at(8989, 0.999, True) < 0.999 == ema_decay_at(8990, 0.999, True)
    assert ema_decay_at(0, 0.999, False) == 0.999


def test_ema_with_warmup_follows_diffusers_recursion():
    """6 training steps with warm-up: e_1 = w_1, then e_k = d_k e_(k-1) + (1 - d_k) w_k with diffusers'
    d_k = min(0.999, k / (9 + k)), so the EMA is far closer to the weights than a plain 0.999 average."""
    cfg, dataset = tiny("train.lr=1e-2", "train.ema_warmup=true"), toy_dataset()
    learner = learner_for(cfg, seed=0)
    expected = None
    for k in range(1, 7):
        step(learner, cfg, dataset)
        w = weights_of(learner)
        d = diffusers_decay(k, 0.999)
        expected = w if expected is None else {key: d * expected[key] + (1 - d) * w[key] for key in w}
    ema = learner.ema.module.state_dict()
    for key in expected:
        torch.testing.assert_close(ema[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_skipped_non_finite_step_changes_no_weight_ema_or_optimizer_moment():
    cfg, dataset = tiny("train.batch_size=2"), toy_dataset()
    learner = learner_for(cfg, seed=0)
    step(learner, cfg, dataset)
    before = {
        "model": weights_of(learner),
        "ema": {k: v.clone() for k, v in learner.ema.state_dict().items()},
        "optimizer": {
            i: {k: v.clone() for k, v in s.items()}
            for i, s in learner.optimizer.state_dict()["state"].items()
        },
    }
    poisoned = [{"image": torch.full_like(d["image"], float("nan"))} for d in dataset]
    loss, grad_norm = step(learner, cfg, poisoned)
    assert not (math.isfinite(loss) and math.isfinite(grad_norm)) and learner.skipped_nonfinite == 1
    after = {
        "model": weights_of(learner),
        "ema": dict(learner.ema.state_dict()),
        "optimizer": learner.optimizer.state_dict()["state"],
    }
    assert_same_tensors(before, after)
    assert all(p.grad is None for p in learner.model.parameters())  # nothing left to leak into the next step
    step(learner, cfg, dataset)  # and the next finite step trains again
    assert any(not torch.equal(w, before["model"][k]) for k, w in weights_of(learner).items())
