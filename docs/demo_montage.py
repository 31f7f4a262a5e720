"""Draws docs/demo.png from the folder ``medddpm demo`` wrote: mid-slices of two held-out real scans
and the first four synthetic volumes, on one grey scale (each volume divided by its own 99th
percentile, so real and synthetic intensities compare).

    python docs/demo_montage.py medddpm-demo docs/demo.png --title "medddpm demo (...)"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from medddpm.preview import save_montage, short_name


def load(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """The scan in RAS (as the montage expects), divided by its 99th percentile, and its voxel size."""
    image = nib.as_closest_canonical(nib.load(path))
    volume = np.asarray(image.dataobj, dtype=np.float32)
    return volume / max(float(np.percentile(volume, 99)), 1e-6), image.header.get_zooms()[:3]


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo_dir", type=Path, help="the folder medddpm demo wrote (medddpm-demo)")
    p.add_argument("output", type=Path, help="the PNG to write")
    p.add_argument("--title", default="medddpm demo: real held-out scans, then synthetic")
    p.add_argument("--real", type=int, default=2, help="held-out scans shown")
    p.add_argument("--synthetic", type=int, default=4, help="synthetic volumes shown")
    args = p.parse_args(argv)
    real = sorted((args.demo_dir / "cohort" / "heldout").glob("*.nii*"))
    synth = sorted((args.demo_dir / "samples").glob("*.nii*"))
    if len(real) < args.real or len(synth) < args.synthetic:
        p.error(f"{args.demo_dir} holds {len(real)} held-out scans and {len(synth)} samples")
    real, synth = real[: args.real], synth[: args.synthetic]
    files = real + synth
    titles = [f"real {short_name(f.name)}" for f in real] + [f"synthetic {short_name(f.name)}" for f in synth]
    volumes, spacings = zip(*(load(f) for f in files), strict=True)
    return save_montage(
        volumes, args.output, spacing=spacings[0], titles=titles, value_range=(0.0, 1.1), suptitle=args.title
    )


if __name__ == "__main__":
    main()
