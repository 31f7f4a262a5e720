"""Latent diffusion on the demo cohort, on a CPU: autoencoder -> latent diffusion -> sample -> evaluate.

    python examples/latent_demo.py OUT_DIR [--size 32] [--subjects 64] [--ae-minutes 3] [--minutes 3]
                                           [--num 16] [--max-steps N] [--threads N]

1. The demo cohort (medddpm.demo.make_cohort: the MNI152 template, deformed per subject; needs
   ``pip install "medddpm[demo]"``) in OUT_DIR/cohort: 32³ at 6 mm, a quarter held out.
2. A small AutoencoderKL (8-16-32 channels, 4 latent channels, f = 4: 32³ -> 4 x 8³), trained on
   whole volumes with L1 + KL for ``--ae-minutes`` (no discriminator: it only sharpens texture after
   thousands of steps), into OUT_DIR/ae; its held-out reconstruction is in OUT_DIR/ae/reconstruction.json.
3. A latent diffusion model (``train --autoencoder``: the demo recipe, v-prediction on a cosine
   schedule, with a U-Net of 32-64-64 channels at 8³) for ``--minutes``, into OUT_DIR/run.
4. ``--num`` samples (decoded tile by tile, written as MRI on [0, 1]) into OUT_DIR/samples, and an
   evaluation against the held-out scans into OUT_DIR/report, with the autoencoder's ceiling: the
   real scans encoded and decoded, how much of the gap to the real set is the autoencoder's.

``--max-steps`` caps both trainings (the time budget still applies); the test suite runs the script
with ``--size 16 --subjects 6 --max-steps 2 --num 2``. The figures are for this toy cohort only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medddpm.config import build_config
from medddpm.demo import make_cohort
from medddpm.evaluation.evaluate import evaluate
from medddpm.inference.sample_to_folder import sample_to_folder
from medddpm.runtime import available_cores, torch_threads
from medddpm.training.autoencoder import train_autoencoder
from medddpm.training.loop import train

AUTOENCODER = [  # small enough for a CPU; whole 32³ volumes as patches
    "autoencoder.channels=[8,16,32]",
    "autoencoder.norm_num_groups=4",
    "autoencoder.adversarial_weight=0",
    "autoencoder.held_out=0.1",
    "train.lr=2e-3",
    "train.ema_decay=0.95",
    "train.preview_every=0",
]
LATENT = [  # the demo recipe, with a wider U-Net: at 8³ its steps are cheap
    "model.space=latent",
    "model.channels=[32,64,64]",
    "model.attention_levels=[false,false,true]",
    "model.norm_num_groups=8",
    "train.preview_every=0",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder for cohort/, ae/, run/, samples/ and report/")
    parser.add_argument("--size", type=int, default=32, help="voxels per side (a multiple of 16)")
    parser.add_argument("--subjects", type=int, default=64, help="demo cohort size (a quarter held out)")
    parser.add_argument("--ae-minutes", type=float, default=3.0, help="autoencoder training time")
    parser.add_argument("--minutes", type=float, default=3.0, help="latent diffusion training time")
    parser.add_argument("--max-steps", type=int, default=100_000, help="step ceiling of both trainings")
    parser.add_argument("--num", type=int, default=16, help="synthetic volumes to draw")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    args = parser.parse_args()
    out = args.out_dir
    budget = {"data.image_size": args.size, "train.max_steps": args.max_steps, "train.device": "cpu"}
    seconds = {}

    with torch_threads(args.threads or available_cores()):
        t0 = time.perf_counter()
        cohort = make_cohort(out / "cohort", args.subjects, args.size, log=print)
        seconds["cohort"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        ae_cfg = build_config(
            "demo",
            [*AUTOENCODER, f"autoencoder.patch_size={args.size}"],
            {**budget, "train.max_minutes": args.ae_minutes},
        )
        print(f"Training the autoencoder for up to {args.ae_minutes:g} minutes into {out / 'ae'}")
        train_autoencoder(ae_cfg, cohort.train_dir, out / "ae", log=print)
        seconds["autoencoder"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        cfg = build_config(
            "demo",
            [*LATENT, f"latent.autoencoder={out / 'ae'}"],
            {**budget, "train.max_minutes": args.minutes},
        )
        print(f"Training latent diffusion for up to {args.minutes:g} minutes into {out / 'run'}")
        trained = train(cfg, cohort.train_dir, out / "run", log=print)
        seconds["diffusion"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        samples = sample_to_folder(trained.run_dir, out / "samples", args.num, seed=0, log=print)
        seconds["sample"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = evaluate(
            cohort.heldout_dir, samples.out_dir, out / "report", run_dir=trained.run_dir, log=print
        )
        seconds["evaluate"] = time.perf_counter() - t0

    held_out = json.loads((out / "ae" / "reconstruction.json").read_text())["mean"]
    m = report.metrics
    print()
    print(
        f"Autoencoder, held-out scans: correlation {held_out['correlation']:.3f}, "
        f"PSNR {held_out['psnr']:.1f} dB, SSIM {held_out['ssim']:.3f}"
    )
    print(f"Latent diffusion: {trained.step} steps; samples vs held-out scans: FID {m['fid']:.4g}")
    print(m["autoencoder_ceiling"]["summary"])
    print("Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print(f"Autoencoder: {out / 'ae'} (reconstruction.json, previews/)")
    print(f"Latent run:  {trained.run_dir}")
    print(f"Samples:     {samples.out_dir} (preview.png)")
    print(f"Report:      {report.html}")


if __name__ == "__main__":
    main()
