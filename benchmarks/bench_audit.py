"""Wall time of ``medddpm audit``: 1,000 training x 1,000 synthetic volumes at 64³ in under 10 minutes on CPU.

Writes the sets as .nii.gz into a temporary folder (training and held-out: ellipsoids of random size on
a noisy background, as bench_evaluate.py draws them; synthetic: new ones, plus a few noisy copies of
training scans so that the audit has something to find), runs medddpm.audit.audit.audit and prints the
total and each stage (loading, correlation, SSIM, features, report) with the process's CPU time and the
machine load, since on a shared machine wall time depends on what else runs. The pairwise correlation
is O(training x (synthetic + held-out + training) x voxels): its time grows with the product of the set
sizes, the rest linearly.

    .venv/bin/python benchmarks/bench_audit.py [--n 1000] [--heldout 100] [--size 64] [--features none]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluate import write_set  # noqa: E402  (the same volumes as the evaluate benchmark)


def write_synthetic(folder: Path, training: Path, n: int, size: int, copies: int, seed: int) -> None:
    """``n - copies`` new volumes and ``copies`` noisy copies of the first training files."""
    write_set(folder, n - copies, size, noise=5.0, seed=seed)
    rng = np.random.default_rng(seed)
    for i, path in enumerate(sorted(training.iterdir())[:copies]):
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32) + rng.normal(0, 2, img.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(data, img.affine), folder / f"copy{i:04d}.nii.gz")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="training and synthetic volumes")
    parser.add_argument("--heldout", type=int, default=100, help="held-out volumes")
    parser.add_argument("--size", type=int, default=64, help="voxels per side")
    parser.add_argument("--copies", type=int, default=10, help="planted copies among the synthetic volumes")
    parser.add_argument("--features", default="resnet10", help="feature network, or none")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from medddpm.audit.audit import audit
    from medddpm.audit.measure import AuditSettings

    with tempfile.TemporaryDirectory(prefix="bench_audit_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        write_set(root / "train", args.n, args.size, noise=5.0, seed=0)
        write_set(root / "heldout", args.heldout, args.size, noise=5.0, seed=1)
        write_synthetic(root / "synth", root / "train", args.n, args.size, args.copies, seed=2)
        print(f"wrote {2 * args.n + args.heldout} volumes of {args.size}³ in {time.perf_counter() - t:.1f} s")

        load_before = os.getloadavg()
        cpu = time.process_time()
        t = time.perf_counter()
        result = audit(
            root / "train",
            root / "heldout",
            root / "synth",
            root / "audit",
            AuditSettings(features=args.features),
            device=args.device,
        )
        wall = time.perf_counter() - t
        cpu = time.process_time() - cpu
        load_after = os.getloadavg()

    r = result.result
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}")  # fmt: skip
    print(f"load average (1, 5, 15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)}")  # fmt: skip
    print(
        f"audit {r['n_training']} training x {r['n_synthetic']} synthetic (+ {r['n_heldout']} held-out) at "
        f"{args.size}³, features {args.features}: {wall:.1f} s wall, {cpu:.1f} s CPU (this process)"
    )
    print(f"  {'stage':<16} {'wall':>8} {'CPU':>8}")
    for stage, seconds in result.seconds.items():
        if stage != "total":
            print(f"  {stage:<16} {seconds:7.1f}s {result.cpu_seconds[stage]:7.1f}s")
    planted = [p for p in r["pairs"]["synthetic"] if p["file"].startswith("copy")]
    found = sum(p["flagged"] for p in planted)
    print(f"verdict: {r['headline']} (exceedance p = {r['exceedance_p_value']:.3g})")
    print(
        f"flagged {r['n_flagged']} of {r['n_synthetic']}; planted copies flagged: {found} of {len(planted)}"
    )
    if args.n == 1000 and args.size == 64:
        print("target (1000 x 1000 at 64³): under 600 s:", "met" if wall < 600 else "NOT met")
    else:
        print("target (1000 x 1000 at 64³): not this size; extrapolate each stage (see the docstring)")
    return {"wall": wall, "cpu": cpu, "seconds": result.seconds, "result": r}


if __name__ == "__main__":
    main()
