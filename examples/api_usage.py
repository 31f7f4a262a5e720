"""train -> sample -> evaluate through medddpm's Python functions (what the commands call).

    python examples/api_usage.py DATA_DIR OUT_DIR [--size 32] [--steps 200] [--modality mri|ct]

DATA_DIR is a folder of NIfTI scans. The settings are small on purpose (a U-Net of 0.1M parameters
on 32³ volumes, a few hundred steps), so the script runs in minutes on a CPU; for real work start
from a preset such as ``brain-mri-64`` or ``ct-128`` and train for tens of thousands of steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medddpm.config import build_config, save_config
from medddpm.data.nifti import read_scan
from medddpm.data.scans import discover_scans
from medddpm.evaluation.evaluate import evaluate
from medddpm.inference.sample_to_folder import sample_to_folder
from medddpm.training.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="folder of .nii / .nii.gz scans")
    parser.add_argument("out_dir", type=Path, help="folder for run/, samples/ and report/")
    parser.add_argument("--size", type=int, default=32, help="voxels per side of the training volumes")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--modality", choices=["mri", "ct"], default="mri", help="intensity mapping")
    parser.add_argument("--num", type=int, default=8, help="synthetic volumes to draw")
    args = parser.parse_args()

    # A voxel size that fits the first scan's field of view into --size voxels a side, so that the
    # whole scan (not a central patch) is trained on; data.spacing resamples every scan to it.
    _, _, first = read_scan(discover_scans(args.data_dir)[0])
    field_of_view = max(n * s for n, s in zip(first.shape, first.spacing, strict=True))
    spacing = round(field_of_view / args.size, 2)

    # The same precedence as the command line: preset < --set style overrides < flags.
    cfg = build_config(
        "tiny",
        [
            f"data.modality={args.modality}",
            f"data.spacing={spacing}",
            "train.lr=1e-3",
            "train.warmup_steps=20",
            "train.ema_decay=0.99",
            "train.checkpoint_every=100",
            "train.preview_every=100",
            "sample.steps=20",
        ],
        {"data.image_size": args.size, "train.max_steps": args.steps},
    )
    run_dir = args.out_dir / "run"
    print(f"Training {args.steps} steps on {args.size}³ volumes at {spacing:g} mm into {run_dir}")
    result = train(cfg, args.data_dir, run_dir, log=print)
    print(f"Last checkpoint: {result.checkpoint} (step {result.step})")
    save_config(cfg, args.out_dir / "api_usage_config.yaml")  # the run folder holds it too

    samples = sample_to_folder(run_dir, args.out_dir / "samples", args.num, seed=0, log=print)
    print(f"{len(samples.files)} samples; manifest {samples.manifest}")

    report = evaluate(args.data_dir, samples.out_dir, args.out_dir / "report", run_dir=run_dir, log=print)
    m = report.metrics
    print(f"FID {m['fid']:.4g} (features: {m['feature_extractor']['label']})")
    print(
        f"MS-SSIM synthetic {m['ms_ssim_synthetic']:.3f}, real {m['ms_ssim_real']:.3f} (lower: more diverse)"
    )
    print(f"MMD² {m['mmd']:.4g}")
    print(f"Report: {report.html}")


if __name__ == "__main__":
    main()
