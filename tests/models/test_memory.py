"""The peak-memory estimate: it follows the levers, matches a measured CPU step, and sizes ct-128."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medddpm.config import build_config
from medddpm.models.memory import GIB, MeasuredStep, _EstimationMode, estimate_memory

REPO = Path(__file__).resolve().parents[2]


def config(size: int, preset: str | None = None, **model):
    overrides = [f"data.image_size={size}"]
    overrides += [f"model.{k}={str(v).lower()}" for k, v in model.items()]
    return build_config(preset, overrides)


def activations(
    size: int = 32, precision: str = "fp32", batch: int = 1, device: str = "cuda", **model
) -> float:
    return estimate_memory(config(size, **model), precision, batch, device=device).activations_gib


def test_levers_move_the_estimate_the_right_way():
    base = activations()
    assert activations(gradient_checkpointing=True) < 0.8 * base
    assert activations(batch=2) == pytest.approx(2 * base, rel=0.02)
    # CPU autocast runs GroupNorm and SiLU in bf16 too: about half. CUDA autocast runs GroupNorm in
    # fp32, so its input, output and the SiLU after it stay fp32: only conv / linear inputs halve.
    assert 0.45 < activations(precision="bf16", device="cpu") / base < 0.6
    assert 0.75 < activations(precision="bf16", device="cuda") / base < 0.95
    e = estimate_memory(config(32), "fp32", 1)
    assert e.total_gib == pytest.approx(5 * e.weights_gib + e.activations_gib)


def test_flash_attention_drops_the_attention_matrices():
    """Default model at 64³: attention at 16³ = 4096 tokens, 2 heads of 32 channels, in 4 layers
    (down, middle, 2 up). Without flash each layer keeps its softmax output, heads x N² fp32."""
    n, heads, layers = 16**3, 2, 4
    saved = activations(64, use_flash_attention=False) - activations(64, use_flash_attention=True)
    matrices = layers * heads * n * n * 4 / GIB
    assert saved == pytest.approx(matrices, rel=0.05)


def test_estimate_matches_a_measured_cpu_step():
    """Default model at 16³, batch 1, fp32, one real training step (warm-up step first).

    The activations (what the graph holds when the forward pass ends) agree within 10 %. The peak
    may exceed the estimate by CPU conv3d's im2col buffer (C_in x 27 x voxels x 4 bytes, ~28 MiB
    here, freed after each convolution; not modelled, since GPUs have no such buffer): within 30 %.
    """
    cfg = config(16)
    estimate = estimate_memory(cfg, "fp32", 1, device="cpu")
    measured = _measure_in_fresh_process(16)
    assert measured.activations_gib == pytest.approx(estimate.activations_gib, rel=0.10)
    assert estimate.total_gib <= measured.peak_gib <= 1.30 * estimate.total_gib
    assert measured.state_gib == pytest.approx(4 * estimate.weights_gib, rel=0.01)  # weights, AdamW, EMA


def _measure_in_fresh_process(size: int):
    """The resident-memory meter needs a process whose allocator has not been through other tests."""
    code = (
        "import json, dataclasses;"
        "from medddpm.config import build_config;"
        "from medddpm.models.memory import measure_training_step;"
        f"m = measure_training_step(build_config(None, ['data.image_size={size}']), 'fp32', 1, device='cpu');"
        "print(json.dumps(dataclasses.asdict(m)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return MeasuredStep(**json.loads(out.stdout.strip().splitlines()[-1]))


def test_ct128_fits_24_gb():
    """The ct-128 preset at its own settings (128³, batch 1, bf16, flash, checkpointing), with 15 %
    headroom for what the estimate leaves out and 0.5 GiB of CUDA context, fits 24 GB = 22.35 GiB."""
    cfg = build_config("ct-128")
    assert cfg.data.image_size == (128, 128, 128) and cfg.train.batch_size == 1
    estimate = estimate_memory(cfg, cfg.train.precision, 1, device="cuda")
    assert estimate.total_gib * 1.15 + 0.5 < 24e9 / GIB


OPS = {
    "conv3d": lambda d: F.conv3d(torch.ones(1, 4, 4, 4, 4, device=d), torch.ones(4, 4, 3, 3, 3, device=d)),
    "linear": lambda d: F.linear(torch.ones(3, 8, device=d), torch.ones(5, 8, device=d)),
    "einsum": lambda d: torch.einsum(
        "bij,bjk->bik", torch.ones(1, 3, 4, device=d), torch.ones(1, 4, 5, device=d)
    ),
    "matmul": lambda d: torch.matmul(torch.ones(3, 4, device=d), torch.ones(4, 5, device=d)),
    "sdpa": lambda d: F.scaled_dot_product_attention(*(torch.ones(1, 2, 8, 4, device=d) for _ in range(3))),
    # from bf16 inputs: which of these does autocast lift to fp32?
    "group_norm": lambda d: F.group_norm(torch.ones(1, 4, 2, 2, 2, device=d, dtype=torch.bfloat16), 2),
    "softmax": lambda d: torch.ones(3, 4, device=d, dtype=torch.bfloat16).softmax(-1),
    "interpolate": lambda d: F.interpolate(
        torch.ones(1, 1, 2, 2, 2, device=d, dtype=torch.bfloat16), scale_factor=2.0
    ),
    "mse_loss": lambda d: F.mse_loss(*(torch.ones(3, device=d, dtype=torch.bfloat16) for _ in range(2))),
    "silu": lambda d: F.silu(torch.ones(3, device=d, dtype=torch.bfloat16)),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_autocast_rules_match_torch(name: str):
    """The estimate's autocast stand-in gives each op the dtype torch's autocast gives it.

    CPU: real autocast. CUDA without a GPU: fake CUDA tensors (no storage) under CUDA autocast.
    """
    op = OPS[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cpu = op("cpu").dtype
    with _EstimationMode(torch.bfloat16, "cpu", flash=False):
        assert op("meta").dtype == cpu
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode():
            enabled = torch.is_autocast_enabled("cuda")
            torch.set_autocast_enabled("cuda", True)
            torch.set_autocast_dtype("cuda", torch.bfloat16)
            try:
                cuda = op("cuda").dtype
            finally:
                torch.set_autocast_enabled("cuda", enabled)
    except RuntimeError as e:  # a torch build that cannot fake CUDA tensors
        pytest.skip(f"no fake CUDA tensors here: {e}")
    with _EstimationMode(torch.bfloat16, "cuda", flash=False):
        assert op("meta").dtype == cuda


def test_reduced_cuda_benchmark_runs_without_a_gpu():
    spec = importlib.util.spec_from_file_location("bench_memory", REPO / "benchmarks" / "bench_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    title, results = bench.cuda_measurements("ct-128", reduced=True)
    assert len(results) == 2 and all(r["measured_peak_gib"] > r["measured_state_gib"] > 0 for r in results)
    table = bench.measured_table(results, title)
    assert table.count("| tiny | 8³ |") == 2


# ---------------------------------------------------------------------------------------------
# The latent space's two stages

TINY_AE = [  # a 3-level autoencoder (4x downsampling) small enough to run on a CPU in a second
    "autoencoder.channels=[8,16,16]",
    "autoencoder.norm_num_groups=4",
    "autoencoder.discriminator_channels=8",
    "autoencoder.discriminator_layers=2",
]


def latent_config(size: int = 32, *extra: str):
    return build_config("tiny", [f"data.image_size={size}", "model.space=latent", *TINY_AE, *extra])


def test_live_bytes_follow_a_hand_count():
    """x * 2 (4000 bytes) -> + 1 (8000 alive) -> the first freed (4000) -> a view (no bytes) -> cat of
    two (12000 alive) -> a sum (4 bytes): the highest is 12004; tensors made before are not counted."""
    from medddpm.models.memory import _inference_peak_bytes

    x = torch.empty(1000, device="meta")

    def forward():
        a = x * 2
        b = a + 1
        del a
        c = b.view(10, 100)
        d = torch.cat([c.flatten(), b])
        return d.sum()

    assert _inference_peak_bytes(forward, device="cpu") == 12004


def test_autoencoder_estimate_adds_up_and_follows_patch_and_batch():
    from medddpm.models.memory import estimate_autoencoder_memory

    cfg = latent_config(64, "autoencoder.patch_size=32")
    e = estimate_autoencoder_memory(cfg, "fp32", 1)
    kept = 2 * 32**3 * 4 / GIB  # the patch and its reconstruction, kept for the discriminator
    assert e.total_gib == pytest.approx(
        e.state_gib + max(e.autoencoder_step_gib, e.discriminator_step_gib) + kept
    )
    assert e.state_gib == pytest.approx(
        (5 * e.autoencoder_parameters + 4 * e.discriminator_parameters) * 4 / GIB
    )
    assert e.patch == (32, 32, 32) and e.autoencoder_step_gib > e.discriminator_step_gib > 0
    # activations scale with the voxels of a patch and with the batch
    bigger = estimate_autoencoder_memory(latent_config(64, "autoencoder.patch_size=64"), "fp32", 1)
    assert bigger.autoencoder_step_gib == pytest.approx(8 * e.autoencoder_step_gib, rel=0.05)
    assert estimate_autoencoder_memory(cfg, "fp32", 2).autoencoder_step_gib == pytest.approx(
        2 * e.autoencoder_step_gib, rel=0.02
    )
    # patches are cut to the volume; bf16 (CUDA rules) keeps GroupNorm in fp32, so saves less than half
    assert (
        estimate_autoencoder_memory(latent_config(16, "autoencoder.patch_size=32"), "fp32", 1).patch
        == (16,) * 3
    )
    assert (
        0.5 < estimate_autoencoder_memory(cfg, "bf16", 1).autoencoder_step_gib / e.autoencoder_step_gib < 0.95
    )
    # without the adversarial loss, no discriminator pass in either step
    plain = estimate_autoencoder_memory(
        latent_config(64, "autoencoder.patch_size=32", "autoencoder.adversarial_weight=0"), "fp32", 1
    )
    assert plain.discriminator_step_gib == 0 and plain.autoencoder_step_gib < e.autoencoder_step_gib


def test_sampling_estimate_holds_one_layer_whole_and_one_slab():
    """The slab decode of a 64³ volume (latent 16³, TINY_AE): the largest activation is the upsampling's
    16 channels at 64³; the peak is the last ResBlock's input (16 channels), middle and output (8 each)
    held whole at 64³ for each volume, plus z and its unscaled copy, plus one slab's working set."""
    from medddpm.models.memory import estimate_sampling_memory

    cfg = latent_config(64, "sample.batch_size=2", "autoencoder.slab_voxels=4096")
    s = estimate_sampling_memory(cfg, "fp32")
    assert s.batch_size == 2 and s.latent_size == (16, 16, 16) and s.slab_voxels == 4096
    assert s.largest_activation == (2, 16, 64, 64, 64)
    assert s.total_gib == pytest.approx(s.weights_gib + max(s.unet_step_gib, s.decode_gib))
    held = 2 * (16 + 8 + 8) * 64**3 * 4 / GIB
    latents = 2 * 2 * 4 * 16**3 * 4 / GIB
    assert held + latents < s.decode_gib < 1.05 * held + latents
    # 8x the voxels: 8x the held activations; larger slabs: a larger working set on top
    larger = estimate_sampling_memory(
        latent_config(128, "sample.batch_size=2", "autoencoder.slab_voxels=4096")
    )
    assert larger.decode_gib == pytest.approx(8 * s.decode_gib, rel=0.05)
    assert larger.unet_step_gib == pytest.approx(8 * s.unet_step_gib, rel=0.1)
    wide = estimate_sampling_memory(latent_config(64, "sample.batch_size=2", "autoencoder.slab_voxels=65536"))
    assert s.decode_gib < wide.decode_gib < held + latents + 2 * 16 * 65536 * 4 * 8 / GIB
    assert estimate_sampling_memory(cfg, "fp32", batch_size=4).unet_step_gib > 1.9 * s.unet_step_gib


def _measure_in_subprocess(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_autoencoder_estimate_matches_a_measured_cpu_step():
    """The generator step's forward at a 32³ patch, run for real on a CPU in a fresh process: what the
    graph holds when the forward pass (losses included) ends is what the estimate counts, within 10 %."""
    from medddpm.models.memory import estimate_autoencoder_memory

    overrides = ["data.image_size=32", "model.space=latent", *TINY_AE, "autoencoder.patch_size=32"]
    estimate = estimate_autoencoder_memory(build_config("tiny", overrides), "fp32", 1, device="cpu")
    code = f"""
import json, torch
from medddpm.config import build_config
from medddpm.models.autoencoder import build_autoencoder, build_discriminator
from medddpm.models.memory import GIB, _Meter
from medddpm.training.autoencoder import kl_divergence
cfg = build_config("tiny", {overrides!r})
torch.manual_seed(0)
ae, d = build_autoencoder(cfg.autoencoder), build_discriminator(cfg.autoencoder)
x = torch.rand(1, 1, 32, 32, 32) * 2 - 1
meter = _Meter(torch.device("cpu"))
ae(x); d(x)  # warm-up: first-call allocations
meter.reset()
reconstruction, mu, sigma = ae(x)
loss = torch.nn.functional.l1_loss(reconstruction, x) + kl_divergence(mu, sigma)
logits = d(reconstruction.contiguous())[-1]
loss = loss + torch.nn.functional.mse_loss(logits, torch.ones_like(logits))
print(json.dumps({{"held": meter.now() / GIB}}))
"""
    measured = _measure_in_subprocess(code)
    assert measured["held"] == pytest.approx(estimate.autoencoder_step_gib, rel=0.10)


def test_decode_estimate_matches_a_measured_slab_decode():
    """``decode_tiled`` of a 64³ volume (latent 16³) in slabs of 4096 output voxels (one row), run for
    real on a CPU in a fresh process: the peak is the estimate's decoding memory (the last ResBlock's
    activations held whole, one slab's working set) plus CPU conv3d's unfold buffer, which GPUs do not
    have (C_in x 27 x slab voxels x 4 bytes for that ResBlock's second convolution, 8 channels in): all
    of it (3 % below for page rounding), and at most 6 % more (small tensors, glibc). An estimate 10 %
    short fails."""
    from medddpm.models.memory import estimate_sampling_memory

    overrides = ["data.image_size=64", "model.space=latent", *TINY_AE, "autoencoder.slab_voxels=4096"]
    cfg = build_config("tiny", overrides)
    estimate = estimate_sampling_memory(cfg, "fp32", batch_size=1, device="cpu")
    latent = 4 * 16**3 * 4 / GIB  # z: made before the measurement starts
    code = f"""
import json, torch
from medddpm.config import build_config
from medddpm.models.autoencoder import build_autoencoder, decode_tiled
from medddpm.models.memory import GIB, _Meter
cfg = build_config("tiny", {overrides!r})
torch.manual_seed(0)
ae = build_autoencoder(cfg.autoencoder).eval()
z = torch.randn(1, 4, 16, 16, 16)
meter = _Meter(torch.device("cpu"))
decode_tiled(ae, z / 1.0, cfg.autoencoder.slab_voxels)  # warm-up
peaks = []
for _ in range(3):
    meter.reset()
    decode_tiled(ae, z / 1.0, cfg.autoencoder.slab_voxels)  # z / scale_factor, as the latent space decodes
    peaks.append(meter.peak() / GIB)
print(json.dumps({{"peak": min(peaks)}}))
"""
    measured = _measure_in_subprocess(code)["peak"]  # the least of three: allocator noise only adds
    unfold = 8 * 27 * 4096 * 4 / GIB
    expected = estimate.decode_gib - latent + unfold
    assert 0.97 * expected <= measured <= 1.06 * expected, (measured * 1024, expected * 1024)
