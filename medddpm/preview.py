"""Mid-slice montages: what a person looks at to judge volumes at a glance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

VIEWS = ("axial", "coronal", "sagittal")


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid-slices of a RAS [D, H, W] volume, oriented for display
    (superior / anterior up, neurological left-right), ready for ``imshow(origin="lower")``."""
    x, y, z = (s // 2 for s in volume.shape)
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def _aspects(spacing: Sequence[float]) -> list[float]:
    sx, sy, sz = spacing
    return [sy / sx, sz / sx, sz / sy]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short_name(name: str, width: int = 22) -> str:
    """A scan's file name without .nii / .nii.gz, cut to ``width`` characters for figure labels."""
    name = name.removesuffix(".gz").removesuffix(".nii")
    return name if len(name) <= width else name[: width - 1] + "…"


def save_montage(
    volumes: Sequence[np.ndarray],
    path: str | Path,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    titles: Sequence[str] | None = None,
    value_range: tuple[float, float] | None = None,
    suptitle: str | None = None,
) -> Path:
    """One row per volume, one column per view; a shared grey scale (default: the 1st-99th percentile)."""
    plt = pyplot()

    volumes = [np.asarray(v, dtype=np.float32) for v in volumes]
    if value_range is None:
        everything = np.concatenate([v.ravel() for v in volumes])
        value_range = (float(np.percentile(everything, 1)), float(np.percentile(everything, 99)))
    n = len(volumes)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n + 0.4), squeeze=False)
    for row, volume in enumerate(volumes):
        for col, (image, aspect) in enumerate(zip(mid_slices(volume), _aspects(spacing), strict=True)):
            ax = axes[row][col]
            ax.imshow(
                image, cmap="gray", origin="lower", aspect=aspect, vmin=value_range[0], vmax=value_range[1]
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(VIEWS[col], fontsize=9)
        if titles is not None:
            axes[row][0].set_ylabel(titles[row], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    # Leave room above the view titles for the figure title (about 0.4 inch).
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()) if suptitle else None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
