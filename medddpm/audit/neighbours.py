"""Nearest training volumes: masked voxel correlation in float32 blocks, SSIM of pairs, feature cosine.

Correlation as matrix products. Each volume v [D, H, W] becomes one unit vector over the voxels of a
shared foreground mask (``foreground_mask``): z = (v[mask] - mean) / ||v[mask] - mean||. Then the
Pearson correlation of two volumes inside the mask is the dot product z_q · z_t, and a block of
queries [Q, M] against a block of training volumes [T, M] is one matrix product [Q, T]. ``nearest_two``
streams blocks of both sets (BLOCK_BYTES of vectors each), keeps a running top 2 per query and never
holds more than one block of products: memory O(block), time O(Q · T · M).

Mirroring. A left-right mirror image of a training scan is as much a copy as the scan itself (flips
are a common augmentation), so with ``mirror`` each training volume is also compared flipped along
the RAS left-right axis, and counts with the better of its two correlations: the second-nearest is
always another training volume, never the mirror image of the nearest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK_BYTES = 256 * 2**20
"""Float32 vectors per block, in bytes (256 MB: 256 volumes at 64³); three blocks live at once."""
FOREGROUND_LEVEL = 0.2
"""A voxel is foreground when the training volumes' mean there exceeds this (intensities on [0, 1]):
above the background of percentile- or window-scaled scans, below soft tissue."""
MIN_FOREGROUND = 0.01
"""With fewer foreground voxels than this share of the volume the mask is the whole volume."""
LEFT_RIGHT_DIM = 2
"""The left-right axis of volumes [N, 1, D, H, W] in RAS (medddpm preprocesses to RAS)."""


@dataclass
class Neighbours:
    """For each query: its nearest training volume and the runner-up, by masked correlation."""

    index: np.ndarray
    """[Q] int: the nearest training volume."""
    mirrored: np.ndarray
    """[Q] bool: the nearest matched as its left-right mirror image."""
    similarity: np.ndarray
    """[Q] float: correlation with the nearest, in [-1, 1]."""
    second_index: np.ndarray
    """[Q] int: the second-nearest training volume (another volume than the nearest)."""
    second: np.ndarray
    """[Q] float: correlation with the second-nearest."""

    @property
    def gap(self) -> np.ndarray:
        """[Q] nearest minus second-nearest correlation: large for a copy of one training scan."""
        return self.similarity - self.second


def foreground_mask(training: torch.Tensor) -> torch.Tensor:
    """Bool [D, H, W]: voxels whose mean over training volumes [N, 1, D, H, W] exceeds FOREGROUND_LEVEL.

    The whole volume when that leaves fewer than MIN_FOREGROUND of the voxels (a dark or flat set).
    """
    mean = torch.zeros(training.shape[2:], dtype=torch.float64)
    for start in range(0, len(training), 64):  # summed in chunks: no float64 copy of the whole set
        mean += training[start : start + 64, 0].double().sum(0)
    mask = mean / len(training) > FOREGROUND_LEVEL
    if mask.double().mean() < MIN_FOREGROUND:
        return torch.ones_like(mask)
    return mask


def unit_vectors(volumes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Float32 [B, M]: each volume [B, 1, D, H, W] inside ``mask``, centred and scaled to unit length.

    A volume constant inside the mask becomes the zero vector: correlation 0 with everything.
    """
    x = volumes.reshape(len(volumes), -1)[:, mask.reshape(-1)].float()
    scale = x.norm(dim=1, keepdim=True)
    x = x - x.mean(dim=1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    # float32 rounding leaves a constant vector a residue ~1e-7 of its length, not exactly 0
    constant = norm <= 1e-5 * scale
    return torch.where(constant, torch.zeros_like(x), x / norm.clamp_min(torch.finfo(torch.float32).tiny))


def _block_size(mask: torch.Tensor) -> int:
    return max(1, BLOCK_BYTES // (4 * int(mask.sum())))


def nearest_two(
    queries: torch.Tensor,
    training: torch.Tensor,
    mask: torch.Tensor,
    *,
    mirror: bool = True,
    exclude_self: bool = False,
    block: int | None = None,
) -> Neighbours:
    """Nearest and second-nearest of each query [Q, 1, D, H, W] among training volumes [T, 1, D, H, W].

    Similarity: Pearson correlation inside ``mask`` (see the module docstring), with each training
    volume's mirror image too when ``mirror``. ``exclude_self``: queries are the training volumes
    themselves (same order); a volume is not its own neighbour. ``block``: volumes per block (default:
    BLOCK_BYTES of vectors). Needs at least two training volumes (one besides the query itself).
    """
    n_train = len(training) - (1 if exclude_self else 0)
    if n_train < 2:
        raise ValueError(f"a nearest and a second-nearest need at least 2 training volumes, got {n_train}")
    block = block or _block_size(mask)
    n = len(queries)
    out_val = torch.empty(n, 2, dtype=torch.float32)
    out_idx = torch.empty(n, 2, dtype=torch.int64)
    out_mirrored = torch.empty(n, dtype=torch.bool)
    for q0 in range(0, n, block):
        zq = unit_vectors(queries[q0 : q0 + block], mask)
        best_val = torch.full((len(zq), 2), -torch.inf)
        best_idx = torch.full((len(zq), 2), -1, dtype=torch.int64)
        best_mirrored = torch.zeros(len(zq), 2, dtype=torch.bool)
        for t0 in range(0, len(training), block):
            chunk = training[t0 : t0 + block]
            sim = zq @ unit_vectors(chunk, mask).T  # [q, t]
            mirrored = torch.zeros_like(sim, dtype=torch.bool)
            if mirror:
                sim_m = zq @ unit_vectors(chunk.flip(LEFT_RIGHT_DIM), mask).T
                mirrored = sim_m > sim
                sim = torch.maximum(sim, sim_m)
            idx = torch.arange(t0, t0 + len(chunk)).expand_as(sim)
            if exclude_self:
                own = torch.arange(q0, q0 + len(zq))[:, None] == idx
                sim = sim.masked_fill(own, -torch.inf)
            vals = torch.cat([best_val, sim], dim=1)
            top_val, top = vals.topk(2, dim=1)
            best_val = top_val
            best_idx = torch.cat([best_idx, idx], dim=1).gather(1, top)
            best_mirrored = torch.cat([best_mirrored, mirrored], dim=1).gather(1, top)
        out_val[q0 : q0 + len(zq)] = best_val
        out_idx[q0 : q0 + len(zq)] = best_idx
        out_mirrored[q0 : q0 + len(zq)] = best_mirrored[:, 0]
    return Neighbours(
        index=out_idx[:, 0].numpy(),
        mirrored=out_mirrored.numpy(),
        similarity=out_val[:, 0].double().numpy(),
        second_index=out_idx[:, 1].numpy(),
        second=out_val[:, 1].double().numpy(),
    )


def ssim_kernel(spatial_shape) -> int:
    """SSIM's Gaussian window: 11 voxels (Wang et al. 2004, MONAI's default), less on smaller sides."""
    side = min(int(s) for s in spatial_shape)
    return max(3, min(11, side if side % 2 else side - 1))


def ssim(
    x: torch.Tensor, y: torch.Tensor, win_size: int, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """SSIM [B] of volumes [B, 1, D, H, W]: MONAI's SSIMMetric (Gaussian window, valid convolution, mean
    over the map) computed with three 1D passes instead of one 3D convolution.

    Why: the Gaussian window is separable; at 64³ with an 11-voxel window MONAI's 3D convolution took
    about 0.6 s per pair on 2 busy CPU cores, which made SSIM the slowest stage of a 1,000-scan audit;
    each 1D pass here is one matrix product with a banded matrix.
    Equal to MONAI's value to float32 rounding (tests/audit/test_neighbours.py).
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2  # MONAI's k1, k2
    dist = torch.arange((1 - win_size) / 2, (1 + win_size) / 2, 1.0, dtype=torch.float64)
    g = torch.exp(-((dist / sigma) ** 2) / 2)
    g = g / g.sum()
    x, y = x.float(), y.float()
    maps = torch.stack(
        [x[:, 0], y[:, 0], x[:, 0] ** 2, y[:, 0] ** 2, x[:, 0] * y[:, 0]], dim=1
    )  # [B, 5, D, H, W]
    for axis in (2, 3, 4):
        # a valid convolution along one axis as a product with a banded matrix [n, n - win + 1]
        n = maps.shape[axis]
        band = torch.zeros(n, n - win_size + 1, dtype=torch.float64)
        for j in range(n - win_size + 1):
            band[j : j + win_size, j] = g
        maps = (maps.movedim(axis, -1) @ band.float().to(maps.device)).movedim(-1, axis)
    mu_x, mu_y, mu_xx, mu_yy, mu_xy = maps.unbind(1)
    sigma_x, sigma_y, sigma_xy = mu_xx - mu_x * mu_x, mu_yy - mu_y * mu_y, mu_xy - mu_x * mu_y
    cs = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    full = ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * cs
    return full.flatten(1).mean(1)


def pair_ssim(
    a: torch.Tensor, b: torch.Tensor, index: np.ndarray, mirrored: np.ndarray, batch_size: int = 8
) -> np.ndarray:
    """SSIM [Q] (data range 1) of each a[q] with b[index[q]], mirrored where asked.

    ``a`` [Q, 1, D, H, W] and ``b`` [T, 1, D, H, W] on [0, 1]: a query and its nearest training volume.
    """
    win_size = ssim_kernel(a.shape[2:])
    out = []
    for start in range(0, len(a), batch_size):
        sl = slice(start, start + batch_size)
        partner = b[torch.as_tensor(index[sl])]
        flip = torch.as_tensor(mirrored[sl]).reshape(-1, 1, 1, 1, 1)
        partner = torch.where(flip, partner.flip(LEFT_RIGHT_DIM), partner)
        out.append(ssim(a[sl], partner, win_size).double())
    return torch.cat(out).numpy() if out else np.zeros(0)


def nearest_by_cosine(queries: np.ndarray, training: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For features [Q, F] and [T, F]: the index [Q] of the training vector of highest cosine, and it [Q]."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    t = training / np.maximum(np.linalg.norm(training, axis=1, keepdims=True), 1e-12)
    cos = q @ t.T
    index = cos.argmax(axis=1)
    return index, cos[np.arange(len(q)), index]


def nearest_feature(
    queries: np.ndarray, training: np.ndarray, mirrored: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``nearest_by_cosine`` against the training features [T, F] and, when given, those of their mirror
    images [T, F] (same order): the training index [Q], the cosine [Q] and whether a mirror image won."""
    if mirrored is None:
        index, cosine = nearest_by_cosine(queries, training)
        return index, cosine, np.zeros(len(index), dtype=bool)
    index, cosine = nearest_by_cosine(queries, np.concatenate([training, mirrored]))
    return index % len(training), cosine, index >= len(training)
