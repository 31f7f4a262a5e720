"""Peak training memory: estimated without allocating it, and measured by running a step.

Estimate. The U-Net is built on PyTorch's ``meta`` device (shapes and dtypes, no storage) and run
forward once while a saved-tensor hook adds up every storage autograd keeps for the backward pass
(each storage once, however many views of it are saved; parameters are not activations). That is
the activation memory of a training step: it peaks when the forward pass ends and backward begins.
Weights, gradients, AdamW moments and the EMA copy are counted from the parameter count.

- Mixed precision: meta tensors have no autocast, so a function mode applies CUDA's autocast rules
  to the operations a DiffusionModelUNet calls (convolutions, linear layers, matmuls and attention
  in bf16/fp16; GroupNorm, softmax, upsampling and the loss in fp32). GroupNorm and SiLU therefore
  keep fp32 copies, and bf16 saves far less than half of the activations.
- Flash attention keeps O(N) per head instead of the N x N attention matrix: a stand-in saves what
  the flash kernels save (q, k, v, output, log-sum-exp), on CUDA and on CPU alike.
- Gradient checkpointing (medddpm.models.unet): autograd keeps each U-Net block's inputs instead of its
  internals, plus the internals of the one block being recomputed in the backward pass at a time.

The latent space's two stages, by the same method: ``estimate_autoencoder_memory`` (one
``train-autoencoder`` step: the AutoencoderKL on a batch of patches, the discriminator's verdict on the
reconstruction, then the discriminator's own step) and ``estimate_sampling_memory`` (``sample``: U-Net
evaluations at the latent grid and slab-by-slab decoding). Inference keeps no graph, so there the
count is of tensors alive at once: a dispatch mode adds each operation's outputs and a weakref
finalizer takes them off when freed (``_LiveBytes``), which is what the allocator holds.

Not counted: the CUDA context (~0.3-0.5 GiB outside torch's allocator), cuDNN workspaces and
allocator fragmentation; leave ~15 % headroom when sizing a GPU from the estimate.

Measurement (``measure_training_step``): one real training step after a warm-up step. On CUDA the
peak is ``torch.cuda.max_memory_allocated``; on CPU (Linux) it is the process's resident-memory
high-water mark, reset just before the step, with glibc told to return freed blocks at once.
"""

from __future__ import annotations

import ctypes
import math
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from medddpm.config import Config
from medddpm.models.spaces import config_space
from medddpm.models.unet import build_unet

GIB = 2**30
CUDA_NOT_COUNTED = "not counted: CUDA context, cuDNN workspace, allocator fragmentation (~15% headroom)"
"""The note every CUDA estimate carries: what none of them counts."""

# CUDA autocast's policy (aten/src/ATen/autocast_mode.cpp) for the functions a DiffusionModelUNet
# and the loss call, by the name the function mode sees. Anything else runs in its inputs' dtype.
# tests/models/test_memory.py checks these sets against torch's own autocast.
_MATMUL_LIKE = {
    "conv3d", "conv_transpose3d", "linear", "matmul", "einsum", "bmm", "mm", "baddbmm", "addmm",
    "scaled_dot_product_attention",
}  # fmt: skip
LOW_PRECISION_OPS = {"cuda": _MATMUL_LIKE, "cpu": _MATMUL_LIKE}  # the same on both
FP32_OPS = {
    "cuda": {"group_norm", "layer_norm", "softmax", "log_softmax", "interpolate", "mse_loss", "exp", "pow"},
    "cpu": {"mse_loss"},
}


@dataclass
class MemoryEstimate:
    parameters: int
    weights_gib: float  # fp32 weights
    gradients_gib: float
    optimizer_gib: float  # AdamW first and second moments
    ema_gib: float
    activations_gib: float  # tensors saved for backward at the peak
    total_gib: float
    notes: list[str] = field(default_factory=list)


class _FlashLikeAttention(torch.autograd.Function):
    """Stand-in for a flash-attention kernel: same output shape, same saved tensors."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - never run on meta tensors
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


class _EstimationMode(TorchFunctionMode):
    """Autocast's casts for ``low`` (None: full precision), and flash attention's saved tensors."""

    def __init__(self, low: torch.dtype | None, device: str, flash: bool):
        super().__init__()
        self.low, self.flash = low, flash
        self.low_ops, self.fp32_ops = LOW_PRECISION_OPS[device], FP32_OPS[device]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = None
        if self.low is not None and name in self.low_ops:
            target = self.low
        elif self.low is not None and name in self.fp32_ops:
            target = torch.float32
        if target is not None:

            def cast(x):
                is_float = isinstance(x, torch.Tensor) and x.is_floating_point()
                return x.to(target) if is_float else x

            args, kwargs = tree_map(cast, args), tree_map(cast, kwargs)
        if name == "scaled_dot_product_attention" and self.flash:
            q, k, v = (kwargs[n] if n in kwargs else args[i] for i, n in enumerate(("query", "key", "value")))
            return _FlashLikeAttention.apply(q, k, v)
        return func(*args, **kwargs)


def _activation_bytes(cfg: Config, batch_size: int, precision: str, device: str = "cuda") -> tuple[int, int]:
    """Bytes autograd keeps for backward: (plain network, network with checkpointed blocks)."""
    with torch.device("meta"):
        model = build_unet(unet_model_config(cfg).model_copy(update={"gradient_checkpointing": False}))
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    kept: dict[int, torch.Tensor] = {}  # storage -> a tensor on it (keeps storage ids unique)
    held: list[torch.Tensor] = []  # block inputs, kept alive for the same reason
    total = 0
    inside: dict[str, int] = {}  # saved by each U-Net block's own operations
    inputs: dict[int, int] = {}  # what checkpointed blocks keep instead: their input tensors, by storage
    current: list[str] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = t.untyped_storage()._cdata
        if key not in kept and key not in params:
            kept[key] = t
            nbytes = t.untyped_storage().nbytes()
            total += nbytes
            if current:
                inside[current[-1]] = inside.get(current[-1], 0) + nbytes
        return t

    def enter(name: str):
        def hook(module, args, kwargs):
            current.append(name)
            tensors = [*args, *kwargs.values(), *(kwargs.get("res_hidden_states_list") or [])]
            for t in tensors:
                if isinstance(t, torch.Tensor):
                    held.append(t)
                    inputs[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()

        return hook

    blocks = {f"down{i}": b for i, b in enumerate(model.down_blocks)}
    blocks["middle"] = model.middle_block
    blocks.update({f"up{i}": b for i, b in enumerate(model.up_blocks)})
    for name, block in blocks.items():
        block.register_forward_pre_hook(enter(name), with_kwargs=True)
        block.register_forward_hook(lambda m, a, o: current.pop() and None)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    space = config_space(cfg)
    x = torch.empty(batch_size, space.channels, *space.latent_size(cfg.data.image_size), device="meta")
    t = torch.zeros(batch_size, dtype=torch.long, device="meta")
    mode = _EstimationMode(low, device, cfg.model.use_flash_attention)
    with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        prediction = model(x, t)
        torch.nn.functional.mse_loss(prediction.float(), x)
    checkpointed = total - sum(inside.values()) + sum(inputs.values()) + max(inside.values(), default=0)
    return total, checkpointed


def estimate_memory(
    cfg: Config, precision: str = "fp32", batch_size: int | None = None, device: str = "cuda"
) -> MemoryEstimate:
    """Peak memory of one training step for ``cfg`` (GiB), without running it.

    ``device`` picks the autocast rules for bf16/fp16: "cuda" (GroupNorm and softmax in fp32) or
    "cpu" (they stay in bf16). fp32 estimates are the same for both.
    """
    batch_size = batch_size or cfg.train.batch_size
    with torch.device("meta"):
        n_params = sum(p.numel() for p in build_unet(unet_model_config(cfg)).parameters())
    weights = n_params * 4 / GIB
    plain, checkpointed = _activation_bytes(cfg, batch_size, precision, device)
    activations = (checkpointed if cfg.model.gradient_checkpointing else plain) / GIB
    notes = []
    if not cfg.model.use_flash_attention and any(cfg.model.attention_levels):
        notes.append("attention matrices counted in full (flash attention off)")
    if device == "cuda":
        notes.append(CUDA_NOT_COUNTED)
    return MemoryEstimate(
        parameters=n_params,
        weights_gib=weights,
        gradients_gib=weights,
        optimizer_gib=2 * weights,
        ema_gib=weights,
        activations_gib=activations,
        total_gib=5 * weights + activations,  # weights, gradients, two AdamW moments, EMA
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# Measurement


@dataclass
class MeasuredStep:
    peak_gib: float  # the step's peak, including weights, optimizer state and EMA
    state_gib: float  # held between steps: weights, AdamW moments, EMA
    activations_gib: float  # added by the forward pass and held when it ends: what backward needs
    seconds: float  # mean wall time of the measured steps
    method: str


def _resident_bytes() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, in bytes (Linux)."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{k}:\s+(\d+) kB", status).group(1)) * 1024 for k in ("VmRSS", "VmHWM"))


def _release_freed_memory() -> None:
    """Make glibc hand freed memory back to the OS, so resident memory follows live tensors.

    Applies to the rest of the process: blocks over 64 KiB get their own mapping, unmapped on free.
    """
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixed: no longer grows with freed blocks)
    libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
    libc.malloc_trim(0)  # release what is already free


class _Meter:
    """Bytes in use now and at the highest since ``reset``, relative to the moment of ``reset``.

    CUDA: torch's allocator statistics. CPU (Linux): resident memory, and its high-water mark,
    which writing 5 to /proc/self/clear_refs resets.
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cpu":
            if not Path("/proc/self/clear_refs").exists():
                raise RuntimeError("measuring CPU memory needs Linux (/proc/self/clear_refs)")
            _release_freed_memory()
        self.base = 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _release_freed_memory()
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _resident_bytes()[0]

    def now(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) - self.base
        return _resident_bytes()[0] - self.base

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return _resident_bytes()[1] - self.base


def measure_training_step(
    cfg: Config,
    precision: str = "fp32",
    batch_size: int | None = None,
    device: str = "cpu",
    steps: int = 1,
    seed: int = 0,
) -> MeasuredStep:
    """Run a warm-up step, then ``steps`` measured training steps of ``cfg`` as ``train()`` runs them.

    A step: forward under autocast, loss, backward, gradient clipping, AdamW step, EMA update.
    Reports the highest memory over the measured steps and their mean wall time. The state held
    between steps is counted from its tensors (CPU) or read from the allocator (CUDA).
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from medddpm.diffusion.objective import diffusion_loss
    from medddpm.diffusion.process import build_process
    from medddpm.runtime import autocast

    dev = torch.device(device)
    meter = _Meter(dev)
    batch_size = batch_size or cfg.train.batch_size
    torch.manual_seed(seed)
    model = build_unet(cfg.model).to(dev)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = build_process(cfg.diffusion)
    space = config_space(cfg)
    generator = torch.Generator(device=dev).manual_seed(seed)
    x0 = torch.rand(batch_size, 1, *cfg.data.image_size, generator=generator, device=dev) * 2 - 1
    x0 = space.encode(x0)

    def step() -> int:
        """One training step; returns the bytes held when the forward pass ended."""
        with autocast(precision, dev):
            loss = diffusion_loss(model, schedule, x0, generator=generator)
        held_by_graph = meter.now()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update_parameters(model)
        return held_by_graph

    step()  # warm-up: AdamW state, kernel choices
    tensors = [*model.parameters(), *model.buffers(), *ema.parameters(), *ema.buffers()]
    tensors += [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    meter.reset()
    if dev.type == "cuda":
        state = meter.base
    else:
        state = sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}.values())
    start = time.perf_counter()
    activations = max(step() for _ in range(steps))
    seconds = (time.perf_counter() - start) / steps
    method = "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "resident-memory high-water mark"
    return MeasuredStep((state + meter.peak()) / GIB, state / GIB, activations / GIB, seconds, method)


# ---------------------------------------------------------------------------------------------
# The latent space's two stages: training the autoencoder, and sampling (U-Net steps, slab decoding)


def unet_model_config(cfg: Config):
    """``cfg.model``, with a latent space's channels read from the ``autoencoder`` section when
    ``model.latent_channels`` is unset (a preset names no autoencoder folder)."""
    mc = cfg.model
    if mc.space == "latent" and mc.latent_channels is None:
        return mc.model_copy(update={"latent_channels": cfg.autoencoder.latent_channels})
    return mc


def _saved_bytes(forward, networks: list[torch.nn.Module], low: torch.dtype | None, device: str) -> int:
    """Bytes autograd keeps for backward while ``forward()`` runs on meta tensors: each storage once,
    parameters of ``networks`` left out (the method of ``_activation_bytes``, without its blocks)."""
    params = {p.untyped_storage()._cdata for n in networks for p in n.parameters()}
    kept: dict[int, torch.Tensor] = {}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = t.untyped_storage()._cdata
        if key not in kept and key not in params:
            kept[key] = t
            total += t.untyped_storage().nbytes()
        return t

    with (
        _EstimationMode(low, device, flash=True),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        forward()
    return total


class _LiveBytes(TorchDispatchMode):
    """Bytes held by the tensors that operations create, at any moment and at their highest.

    Each output storage is counted once, from the operation that made it until the last tensor on it
    is freed (a weakref finalizer per tensor object), as the allocator sees it. Tensors made before
    the mode are not counted, nor views of the storages in ``exclude`` (inputs, parameters: a linear
    layer's transposed weight is a view, not new memory).
    """

    def __init__(self, exclude: set[int] = frozenset()):
        super().__init__()
        self.exclude = exclude
        self.now = self.peak = 0
        self.storages: dict[int, list[int]] = {}  # storage -> [tensors alive on it, bytes]

    def _release(self, key: int) -> None:
        entry = self.storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.now -= entry[1]
            del self.storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage()._cdata
                if key in self.exclude:
                    continue
                if key not in self.storages:
                    self.storages[key] = [0, t.untyped_storage().nbytes()]
                    self.now += self.storages[key][1]
                    self.peak = max(self.peak, self.now)
                self.storages[key][0] += 1
                weakref.finalize(t, self._release, key)
        return out


def _inference_peak_bytes(
    forward, low: torch.dtype | None = None, device: str = "cuda", held: Sequence[torch.Tensor] = ()
) -> int:
    """Highest bytes alive at once while ``forward()`` runs without autograd on meta tensors, not
    counting the storages of ``held`` (parameters and inputs, which exist before and after)."""
    live = _LiveBytes({t.untyped_storage()._cdata for t in held})
    with torch.no_grad(), _EstimationMode(low, device, flash=True), live:
        forward()
    return live.peak


@dataclass
class AutoencoderMemoryEstimate:
    """One step of ``train-autoencoder``: the AutoencoderKL's and, after the warm-up, the discriminator's."""

    autoencoder_parameters: int
    discriminator_parameters: int
    patch: tuple[int, ...]
    state_gib: (
        float  # autoencoder: weights, gradients, AdamW moments, EMA; discriminator: weights, gradients, Adam
    )
    autoencoder_step_gib: (
        float  # saved for backward: L1 + KL + the discriminator's verdict on the reconstruction
    )
    discriminator_step_gib: float  # saved for backward: the discriminator on real and reconstructed patches
    total_gib: float  # state + the larger step + the patches kept for the discriminator
    notes: list[str] = field(default_factory=list)


def estimate_autoencoder_memory(
    cfg: Config, precision: str = "fp32", batch_size: int | None = None, device: str = "cuda"
) -> AutoencoderMemoryEstimate:
    """Peak memory of one ``train-autoencoder`` step for ``cfg`` (GiB), without running it.

    Patches of ``autoencoder.patch_size`` (cut to ``data.image_size``), ``batch_size`` of them
    (default ``train.batch_size``), counted as ``estimate_memory`` counts the U-Net's: the tensors
    autograd keeps, on meta tensors, with autocast's casts for ``precision``. The generator step
    includes the discriminator's pass over the reconstruction (after ``adversarial_warmup_steps``);
    the discriminator's own step runs after the autoencoder's graph is freed.
    """
    from medddpm.models.autoencoder import build_autoencoder, build_discriminator

    ac = cfg.autoencoder
    batch_size = batch_size or cfg.train.batch_size
    patch = tuple(min(p, s) for p, s in zip(ac.patch_size, cfg.data.image_size, strict=True))
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.device("meta"):
        autoencoder, discriminator = build_autoencoder(ac), build_discriminator(ac)
    x = torch.empty(batch_size, 1, *patch, device="meta")
    adversarial = ac.adversarial_weight > 0

    def generator_step() -> None:
        reconstruction, z_mu, z_sigma = autoencoder(x)
        loss = torch.nn.functional.l1_loss(reconstruction.float(), x)
        mu, sigma = z_mu.float(), z_sigma.float()
        loss = loss + 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).sum()
        if adversarial:
            logits = discriminator(reconstruction.contiguous())[-1].float()
            loss = loss + torch.nn.functional.mse_loss(logits, torch.ones_like(logits))

    def discriminator_step() -> None:
        for patches in (x, x.clone()):  # the reconstruction (detached) and the real patch
            logits = discriminator(patches)[-1].float()
            torch.nn.functional.mse_loss(logits, torch.ones_like(logits))

    networks = [autoencoder, discriminator]
    generator = _saved_bytes(generator_step, networks, low, device) / GIB
    critic = (_saved_bytes(discriminator_step, networks, low, device) if adversarial else 0) / GIB
    n_ae = sum(p.numel() for p in autoencoder.parameters())
    n_d = sum(p.numel() for p in discriminator.parameters())
    state = (5 * n_ae + 4 * n_d) * 4 / GIB
    kept = cfg.train.grad_accum * 2 * x.numel() * 4 / GIB  # (patch, reconstruction) per micro-batch
    notes = ["the autoencoder has no gradient checkpointing: patch_size and batch size set its memory"]
    if device == "cuda":
        notes.append(CUDA_NOT_COUNTED)
    return AutoencoderMemoryEstimate(
        autoencoder_parameters=n_ae,
        discriminator_parameters=n_d,
        patch=patch,
        state_gib=state,
        autoencoder_step_gib=generator,
        discriminator_step_gib=critic,
        total_gib=state + max(generator, critic) + kept,
        notes=notes,
    )


@dataclass
class SamplingMemoryEstimate:
    """``sample`` of a latent run: U-Net steps at the latent grid, then slab-by-slab decoding."""

    batch_size: int  # volumes denoised and decoded together (sample.batch_size)
    latent_size: tuple[int, ...]
    slab_voxels: int  # output voxels per slab of each decoder convolution (autoencoder.slab_voxels)
    largest_activation: tuple[int, ...]  # the largest decoder layer output held whole, [B, C, D, H, W]
    weights_gib: float  # the U-Net and the autoencoder, fp32, both on the device while decoding
    unet_step_gib: float  # highest alive during one U-Net evaluation, plus the sampler's state
    decode_gib: float  # the slab decode's highest: held activations, one slab's working set, the output
    total_gib: float  # weights + the larger of the two
    notes: list[str] = field(default_factory=list)


def _decoder_activations(autoencoder: torch.nn.Module, z: torch.Tensor) -> list[tuple[int, ...]]:
    """Output shapes of the decoder's layers (post_quant_conv, then each decoder block) for latent
    ``z``, recorded by forward hooks on one meta-tensor pass."""
    shapes: list[tuple[int, ...]] = []
    layers = [autoencoder.post_quant_conv, *autoencoder.decoder.blocks]
    handles = [m.register_forward_hook(lambda m, a, o: shapes.append(tuple(o.shape))) for m in layers]
    try:
        with torch.no_grad():
            autoencoder.decode(z)
    finally:
        for h in handles:
            h.remove()
    return shapes


def estimate_sampling_memory(
    cfg: Config, precision: str = "fp32", batch_size: int | None = None, device: str = "cuda"
) -> SamplingMemoryEstimate:
    """Peak memory of ``sample`` for a latent-space ``cfg`` (GiB), without running it.

    U-Net: one evaluation at the latent grid under autocast for ``precision``, without autograd, the
    highest total of live tensors (``_LiveBytes``) plus x_t and four more latents of sampler state
    (DPM-Solver++(2M) keeps its previous x-hat_0). Decoding (float32, as ``generate`` runs it):
    medddpm.models.slabs' ``decode_slabs`` itself, run on meta tensors at the whole latent
    [B, C, *latent_size] with ``autoencoder.slab_voxels``, counting live tensors (``_LiveBytes``):
    the layer activations it holds whole (a ResBlock's input, middle and output), one slab's working
    set (normalised, SiLU, upsampled and padded input rows, the slab's output) and the output volume,
    plus the latent z and its unscaled copy. Not counted: convolution workspaces (cuDNN; on a CPU,
    conv3d's unfold buffer of C_in x 27 x one slab's output voxels).
    """
    from medddpm.models.autoencoder import build_autoencoder, downsampling
    from medddpm.models.slabs import decode_slabs

    ac, mc = cfg.autoencoder, unet_model_config(cfg)
    batch_size = batch_size or cfg.sample.batch_size
    f = downsampling(ac)
    latent = tuple(int(s) // f for s in cfg.data.image_size)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.device("meta"):
        unet, autoencoder = build_unet(mc), build_autoencoder(ac)
    channels = mc.latent_channels
    x = torch.empty(batch_size, channels, *latent, device="meta")
    t = torch.zeros(batch_size, dtype=torch.long, device="meta")
    unet_peak = _inference_peak_bytes(lambda: unet(x, t), low, device, [*unet.parameters(), x, t])
    decoder_peak = _inference_peak_bytes(
        lambda: decode_slabs(autoencoder, x / 1.0, ac.slab_voxels),  # z / scale_factor, then decode
        None,
        device,
        [*autoencoder.parameters(), x],
    )
    largest = max(_decoder_activations(autoencoder, x), key=math.prod)
    weights = sum(p.numel() for n in (unet, autoencoder) for p in n.parameters()) * 4
    unet_step = unet_peak + 5 * x.numel() * 4
    decode = decoder_peak + x.numel() * 4  # the sampled latent, alive throughout
    notes = [
        f"decoding {batch_size} volume(s) of {'x'.join(map(str, cfg.data.image_size))} in float32, "
        f"layer by layer in slabs of at most {ac.slab_voxels} output voxels"
    ]
    if ac.attention:
        notes.append("the decoder's self-attention runs on the whole bottleneck (no slabs there)")
    if device == "cuda":
        notes.append(CUDA_NOT_COUNTED)
    return SamplingMemoryEstimate(
        batch_size=batch_size,
        latent_size=latent,
        slab_voxels=ac.slab_voxels,
        largest_activation=largest,
        weights_gib=weights / GIB,
        unet_step_gib=unet_step / GIB,
        decode_gib=decode / GIB,
        total_gib=(weights + max(unet_step, decode)) / GIB,
        notes=notes,
    )
