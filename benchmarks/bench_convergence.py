"""Quality against training CPU-seconds: recipes trained side by side on the demo cohort.

Recipes (each a list of ``--set`` overrides on ``configs/demo.yaml`` after DEMO_V1, at the demo's model size):

    tutorial   MONAI's 3D DDPM tutorial: eps target, scaled-linear betas 0.0005-0.0195, Adam (AdamW
               without weight decay) at a constant 2.5e-5, no warm-up, no gradient clipping, no EMA
               (sampled from the raw weights), with ancestral DDPM as the tutorial samples, over 250 of
               its 1000 steps (respaced, Nichol & Dhariwal 2021) to keep evaluations affordable on a CPU
    demo       the demo's recipe before its retune (v target, cosine schedule, constant lr 2e-3, EMA 0.95,
               DPM-Solver++ 20 steps: DEMO_V1), on which every other recipe is set
    default    medddpm's default recipe (configs/default.yaml's diffusion and train sections: v target,
               linear schedule, AdamW 2e-3 with 100 warm-up steps and cosine decay over 20,000 steps, EMA
               0.999 with warm-up, DPM-Solver++ 25 steps) at the demo's model size
    eps        the demo with the eps target: with ``demo``, what the v target is worth
    wavelet    the demo in wavelet space (model.space=wavelet)
    rflow      the demo with rectified flow (diffusion.process=rflow, Euler sampling)
    min-snr    the demo with min-SNR-5 loss weights
    combo      wavelet + rflow
    flow       the demo's recipe (configs/demo.yaml) at the 2,200 steps it took before medddpm demo fitted
               its steps to the machine: rectified flow with uniform training times, lr 2e-3 decayed to
               2% over them, EMA 0.99, Euler 30; it stops at 2,200 steps

Every recipe trains in turns of ``--chunk-seconds`` of wall-clock training (``train.max_minutes``,
then ``--resume``), the recipes taking turns in a rotating order so that machine noise hits all
alike. Training cost is counted in CPU-seconds of this process (``time.process_time`` across the
training calls, including each call's few-second set-up, the same for every recipe). After every
``--eval-every`` turns (or at the turns ``--eval-turns`` lists) each recipe's latest checkpoint
draws ``--samples`` volumes (the recipe's own default sampler and steps) and is measured against the
held-out scans (a recipe that has reached its own max_steps is not measured again):

    fid           Frechet distance of random-init resnet10 features (seed 0; comparable only within
                  this run), medddpm.evaluation
    coverage      Naeem et al. 2020, k = 5 (fewer with few samples)
    nn_corr       median over synthetic volumes of the Pearson correlation with the nearest training
                  volume (held-out real volumes give the reference, printed once)
    ms_ssim       mean pairwise MS-SSIM within the synthetic set (and within the held-out set)

Writes OUT/convergence.csv, OUT/convergence.png and OUT/convergence.md (the final row of each
recipe, and for each the CPU-seconds at which its FID first reached the tutorial's final FID,
as a fraction of the tutorial's CPU-seconds).

    python benchmarks/bench_convergence.py --output /tmp/conv --budget-seconds 1800 --size 32
    python benchmarks/bench_convergence.py --output /tmp/conv --recipes tutorial,default,flow \\
        --budget-seconds 1200 --chunk-seconds 75 --eval-turns 1,2,4,8,16
    python benchmarks/bench_convergence.py --output /tmp/conv --quick     # seconds, a smoke run
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch

DEMO_V1 = [
    "diffusion.process=ddpm",
    "diffusion.rflow_timesteps=logit-normal",
    "diffusion.schedule=cosine",
    "diffusion.prediction=v",
    "train.warmup_steps=20",
    "train.min_lr_ratio=1.0",
    "train.ema_decay=0.95",
    "sample.sampler=dpm++",
    "sample.steps=20",
    "sample.eta=null",
]
"""The demo's recipe before its retune (configs/demo.yaml up to e957064), on which every recipe below is
set, so that each recipe means what it meant when RESULTS.md's convergence run was recorded whatever
the demo config holds today (it now trains rectified flow for a fixed number of steps)."""
RECIPES: dict[str, list[str]] = {
    "tutorial": [
        "diffusion.schedule=scaled_linear",
        "diffusion.beta_start=0.0005",
        "diffusion.beta_end=0.0195",
        "diffusion.prediction=eps",
        "train.lr=2.5e-5",
        "train.warmup_steps=0",
        "train.min_lr_ratio=1.0",
        "train.grad_clip=0",
        "train.weight_decay=0",
        "sample.sampler=ddpm",
        "sample.steps=250",
    ],
    "demo": [],
    "default": [
        "diffusion.schedule=linear",
        "train.warmup_steps=100",
        "train.min_lr_ratio=0.1",
        "train.max_steps=20000",
        "train.ema_decay=0.999",
        "sample.steps=25",
    ],
    "eps": ["diffusion.prediction=eps"],
    "wavelet": ["model.space=wavelet"],
    "rflow": ["diffusion.process=rflow", "sample.sampler=euler", "sample.steps=20"],
    "min-snr": ["diffusion.min_snr_gamma=5"],
    "combo": ["model.space=wavelet", "diffusion.process=rflow", "sample.sampler=euler", "sample.steps=20"],
    "flow": [
        "diffusion.process=rflow",
        "diffusion.rflow_timesteps=uniform",
        "train.warmup_steps=50",
        "train.min_lr_ratio=0.02",
        "train.max_steps=2200",
        "train.ema_decay=0.99",
        "sample.sampler=euler",
        "sample.steps=30",
    ],
}
NO_EMA = {"tutorial"}
"""Recipes sampled from their raw weights (the tutorial keeps no EMA)."""
QUICK_MODEL = [
    "model.channels=[8,16]",
    "model.attention_levels=[false,true]",
    "model.num_head_channels=8",
    "model.norm_num_groups=4",
]
FIELDS = ["recipe", "turn", "cpu_seconds", "steps", "fid", "coverage", "nn_corr", "ms_ssim_synth",
          "ms_ssim_real"]  # fmt: skip


def recipe_config(name: str, size: int, chunk_seconds: float, quick: bool):
    from medddpm.config import build_config

    overrides = [
        f"data.image_size={size}",
        f"train.max_minutes={chunk_seconds / 60}",
        "train.max_steps=10000000",
        "train.checkpoint_every=10000000",
        "train.preview_every=0",
        "train.log_every=50",
        *(QUICK_MODEL if quick else []),
        *DEMO_V1,
        *RECIPES[name],
    ]
    return build_config("demo", overrides)


def real_volumes(cfg, files) -> torch.Tensor:
    """The scans as the run sees them, [N, 1, D, H, W] on [0, 1]."""
    from medddpm.data.transforms import build_dataset

    dataset = build_dataset(cfg.data, files)
    return (torch.stack([dataset[i]["image"] for i in range(len(dataset))]).float() + 1) / 2


def draw_samples(run_dir: Path, n: int, ema: bool) -> torch.Tensor:
    """``n`` volumes [n, 1, D, H, W] on [0, 1] from the run's latest checkpoint (seeds 0..n-1)."""
    from medddpm.diffusion.generate import generate
    from medddpm.diffusion.process import build_process
    from medddpm.models.spaces import config_space
    from medddpm.models.unet import build_unet
    from medddpm.training.checkpoint import load_weights, open_checkpoint, resolve_checkpoint

    ckpt = open_checkpoint(resolve_checkpoint("latest", run_dir))
    cfg = ckpt.config
    model = build_unet(cfg.model)
    load_weights(model, ckpt.weights(ema=ema), ckpt.path)
    volumes = generate(
        model, build_process(cfg.diffusion), cfg.data.image_size, list(range(n)), cfg.sample.sampler,
        cfg.sample.steps, space=config_space(cfg), batch_size=cfg.sample.batch_size,
    )  # fmt: skip
    return (torch.stack(volumes) + 1) / 2


def nearest_correlation(volumes: torch.Tensor, training: torch.Tensor) -> float:
    """Median over ``volumes`` of the Pearson correlation with the most correlated training volume."""
    from medddpm.evaluation.metrics import nearest_correlation as per_volume

    return float(np.median(per_volume(volumes, training)))


def quality(
    synth: torch.Tensor, heldout: torch.Tensor, training: torch.Tensor, extractor
) -> dict[str, float]:
    from medddpm.evaluation.metrics import fid_from_features, pairwise_ms_ssim, prdc

    f_real, f_synth = extractor.extract(heldout), extractor.extract(synth)
    k = max(1, min(5, len(heldout) - 1, len(synth) - 1))
    return {
        "fid": fid_from_features(f_real, f_synth),
        "coverage": prdc(f_real, f_synth, nearest_k=k)["coverage"],
        "nn_corr": nearest_correlation(synth, training),
        "ms_ssim_synth": pairwise_ms_ssim(synth, max_pairs=100)["mean"],
        "ms_ssim_real": pairwise_ms_ssim(heldout, max_pairs=100)["mean"],
    }


def run(args: argparse.Namespace) -> list[dict]:
    from medddpm.demo import make_cohort
    from medddpm.evaluation.features import build_feature_extractor
    from medddpm.training.loop import train

    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    cohort = make_cohort(out / "cohort", n_subjects=args.subjects, image_size=args.size, seed=0, log=print)
    configs = {n: recipe_config(n, args.size, args.chunk_seconds, args.quick) for n in names}
    any_cfg = next(iter(configs.values()))
    training, heldout = real_volumes(any_cfg, cohort.train), real_volumes(any_cfg, cohort.heldout)
    print(f"reference: held-out nearest-training correlation {nearest_correlation(heldout, training):.3f}")
    extractor = build_feature_extractor("resnet10", seed=0)
    cpu = dict.fromkeys(names, 0.0)
    steps = dict.fromkeys(names, 0)
    turns = max(1, math.ceil(args.budget_seconds / args.chunk_seconds))
    rows: list[dict] = []
    for turn in range(turns):
        order = names[turn % len(names) :] + names[: turn % len(names)]  # rotate who goes first
        for name in order:
            clock = {"last": time.process_time()}

            def count(entry, name=name, clock=clock) -> None:
                now = time.process_time()
                cpu[name] += now - clock["last"]
                clock["last"] = now

            result = train(
                configs[name], cohort.root / "train", out / "runs" / name, resume=turn > 0, on_step=count
            )
            steps[name] = result.step
        if due(turn + 1, turns, args):
            for name in names:
                if any(r["recipe"] == name and r["steps"] == steps[name] for r in rows):
                    continue  # stopped at its own max_steps: measured already
                synth = draw_samples(out / "runs" / name, args.samples, ema=name not in NO_EMA)
                row = {"recipe": name, "turn": turn + 1, "cpu_seconds": cpu[name], "steps": steps[name]}
                row.update(quality(synth, heldout, training, extractor))
                rows.append(row)
                print(
                    ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
                )
    write_outputs(rows, out)
    return rows


def due(turn: int, turns: int, args: argparse.Namespace) -> bool:
    """Whether the recipes are measured after ``turn`` (1-based) of ``turns``: always after the last."""
    if args.eval_turns:
        wanted = {int(t) for t in args.eval_turns.split(",")}
        return turn in wanted or turn == turns
    return turn % args.eval_every == 0 or turn == turns


def time_to_reach(rows: list[dict], name: str, target_fid: float) -> float | None:
    """CPU-seconds of the first evaluation at which ``name``'s FID was at most ``target_fid``."""
    for row in rows:
        if row["recipe"] == name and row["fid"] <= target_fid:
            return row["cpu_seconds"]
    return None


def write_outputs(rows: list[dict], out: Path) -> None:
    with (out / "convergence.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["recipe"] for r in rows))
    metrics = ["fid", "coverage", "nn_corr", "ms_ssim_synth"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for ax, metric in zip(axes, metrics, strict=True):
        for name in names:
            mine = [r for r in rows if r["recipe"] == name]
            ax.plot([r["cpu_seconds"] for r in mine], [r[metric] for r in mine], marker="o", label=name)
        if metric == "fid":
            ax.set_yscale("log")  # noise and anatomy lie an order of magnitude apart
        if metric == "ms_ssim_synth":
            ax.axhline(rows[-1]["ms_ssim_real"], color="k", linestyle=":", label="real")
        ax.set_xlabel("training CPU-seconds")
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=100)
    plt.close(fig)

    final = {name: [r for r in rows if r["recipe"] == name][-1] for name in names}
    lines = [
        "| recipe | steps | CPU-s | FID | coverage | nn corr | MS-SSIM synth (real) "
        "| reaches tutorial FID at |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tutorial = final.get("tutorial")
    for name, r in final.items():
        reach = "n/a"
        if tutorial is not None:
            t = time_to_reach(rows, name, tutorial["fid"])
            reach = "not reached" if t is None else f"{t:.0f} s ({t / tutorial['cpu_seconds']:.2f}x tutorial)"
        lines.append(
            f"| {name} | {r['steps']} | {r['cpu_seconds']:.0f} | {r['fid']:.4g} | {r['coverage']:.2f} | "
            f"{r['nn_corr']:.3f} | {r['ms_ssim_synth']:.3f} ({r['ms_ssim_real']:.3f}) | {reach} |"
        )
    (out / "convergence.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="folder for the cohort, runs and results")
    p.add_argument(
        "--budget-seconds", type=float, default=1800, help="wall-clock training seconds per recipe"
    )
    p.add_argument("--chunk-seconds", type=float, default=60, help="training seconds per turn")
    p.add_argument("--eval-every", type=int, default=5, help="turns between evaluations")
    p.add_argument(
        "--eval-turns", default="", help="comma-separated turns to evaluate after (1-based), not --eval-every"
    )
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    p.add_argument("--size", type=int, default=32, help="cohort and training image size (cube side)")
    p.add_argument("--subjects", type=int, default=64, help="cohort size (a quarter held out)")
    p.add_argument("--samples", type=int, default=16, help="synthetic volumes per evaluation")
    p.add_argument("--quick", action="store_true", help="smoke run: 16³, a 2-level U-Net, seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.subjects, args.samples = 16, 8, 3
        args.budget_seconds, args.chunk_seconds, args.eval_every = 2.0, 1.0, 1
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
