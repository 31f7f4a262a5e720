"""Peak training memory, estimated without allocating it.

The U-Net is built on PyTorch's ``meta`` device (shapes and dtypes, no storage) and run forward
once while a saved-tensor hook adds up every tensor autograd keeps for the backward pass: that is
the activation memory of a training step. Parameters, gradients, AdamW moments and the EMA copy
are counted from the parameter count. Flash attention keeps O(N) per head instead of the N x N
attention matrix; on the meta device it is stood in for by a function that saves what the flash
kernel saves (q, k, v, output, log-sum-exp). With gradient checkpointing, autograd keeps only the
blocks' inputs, plus the activations of the one block being recomputed at a time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medddpm.config import Config
from medddpm.unet import build_unet

GIB = 2**30


@dataclass
class MemoryEstimate:
    parameters: int
    weights_gib: float  # fp32 weights
    gradients_gib: float
    optimizer_gib: float  # AdamW first and second moments
    ema_gib: float
    activations_gib: float  # tensors saved for backward at the peak
    total_gib: float
    notes: list[str]


class _FlashLikeAttention(torch.autograd.Function):
    """Meta-device stand-in for a flash-attention kernel: same output shape, same saved tensors."""

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


@contextlib.contextmanager
def _flash_attention_stand_in():
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, *args, **kwargs):
        return _FlashLikeAttention.apply(query, key, value)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _activation_bytes(cfg: Config, batch_size: int, dtype: torch.dtype) -> tuple[int, int]:
    """Bytes autograd keeps for backward: (plain network, network with checkpointed blocks)."""
    with torch.device("meta"):
        model = build_unet(cfg.model.model_copy(update={"gradient_checkpointing": False})).to(dtype)
    saved: set[int] = set()
    total = 0
    inside: dict[str, int] = {}  # saved by each U-Net block's own operations
    inputs = 0  # what checkpointed blocks keep instead: their input tensors
    current: list[str] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if id(t) not in saved:
            saved.add(id(t))
            nbytes = t.numel() * t.element_size()
            total += nbytes
            if current:
                inside[current[-1]] = inside.get(current[-1], 0) + nbytes
        return t

    def enter(name: str):
        def hook(module, args, kwargs):
            nonlocal inputs
            current.append(name)
            tensors = [kwargs.get("hidden_states"), *(kwargs.get("res_hidden_states_list") or [])]
            inputs += sum(t.numel() * t.element_size() for t in tensors if t is not None)

        return hook

    blocks = {f"down{i}": b for i, b in enumerate(model.down_blocks)}
    blocks["middle"] = model.middle_block
    blocks.update({f"up{i}": b for i, b in enumerate(model.up_blocks)})
    for name, block in blocks.items():
        block.register_forward_pre_hook(enter(name), with_kwargs=True)
        block.register_forward_hook(lambda m, a, o: current.pop() and None)
    x = torch.empty(batch_size, 1, *cfg.data.image_size, device="meta", dtype=dtype)
    t = torch.zeros(batch_size, dtype=torch.long, device="meta")
    attention = _flash_attention_stand_in() if cfg.model.use_flash_attention else contextlib.nullcontext()
    with attention, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, t)
    checkpointed = total - sum(inside.values()) + inputs + max(inside.values(), default=0)
    return total, checkpointed


def estimate_memory(cfg: Config, precision: str = "fp32", batch_size: int | None = None) -> MemoryEstimate:
    """Peak memory of one training step for ``cfg`` (GiB), without running it."""
    batch_size = batch_size or cfg.train.batch_size
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in build_unet(cfg.model).parameters())
    weights = n_params * 4 / GIB
    plain, checkpointed = _activation_bytes(cfg, batch_size, dtype)
    activations = (checkpointed if cfg.model.gradient_checkpointing else plain) / GIB
    notes = []
    if precision in ("bf16", "fp16"):
        notes.append("half-precision activations approximated by casting the whole network")
    if not cfg.model.use_flash_attention and any(cfg.model.attention_levels):
        notes.append("attention matrices counted in full (flash attention off)")
    total = weights * 4 + activations  # weights, gradients, two AdamW moments; EMA below
    return MemoryEstimate(
        parameters=n_params,
        weights_gib=weights,
        gradients_gib=weights,
        optimizer_gib=2 * weights,
        ema_gib=weights,
        activations_gib=activations,
        total_gib=total + weights,
        notes=notes,
    )
