"""Peak training memory: estimates at 64³ and 128³, checked against real steps.

    python benchmarks/bench_memory.py                  # estimates + CPU measurements (markdown on stdout)
    python benchmarks/bench_memory.py --cuda           # real CUDA peak and step time, 64³ and 128³
    python benchmarks/bench_memory.py --cuda --reduced # the same code path at 8³ (on CPU without a GPU)
    python benchmarks/bench_memory.py --presets        # every stage of every GPU preset, estimated

1. Estimates (medddpm.models.memory.estimate_memory, CUDA autocast rules): activations and total peak at
   64³ and 128³, batch 1, for the ``--config`` model (default ct-128), with gradient checkpointing
   and flash attention each on and off, in fp32 and bf16.
2. CPU measurements next to the estimate for the same settings (device "cpu" rules): the default
   model at small sizes, one training step each, every one in a fresh process.
3. ``--cuda``: torch.cuda.max_memory_allocated and the mean step time of real training steps at 64³
   and 128³ with each lever on and off (each in a fresh process). Without a GPU, ``--reduced`` runs
   the same code at 8³ on CPU (memory from the resident high-water mark) so the path stays tested.
4. ``--presets``: each preset that names a GPU (``# fits: one N GB GPU``), at its own settings:
   training; for latent presets also train-autoencoder and sampling (estimate_autoencoder_memory,
   estimate_sampling_memory). ``precision: auto`` is estimated as fp32, the larger.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from bench_train import cpu_model  # noqa: E402

# (gradient checkpointing, flash attention, precision)
LEVERS = list(itertools.product([True, False], [True, False], ["bf16", "fp32"]))
"""Every lever on first (the configuration a large volume needs), so a run cut short by a time limit
has measured what matters most."""
# (size, checkpointing, flash, precision): default model config, batch 1. fp32 only: this CPU runs
# bf16 conv3d through a slow fallback (~10 min a step at 32³) whose buffers swamp the activations.
CPU_CASES = [
    (32, False, True, "fp32"),
    (32, True, True, "fp32"),
    (32, False, False, "fp32"),
    (48, False, True, "fp32"),
    (48, True, True, "fp32"),
    (48, False, False, "fp32"),
]


def config_for(preset: str | None, size: int, checkpointing: bool, flash: bool):
    from medddpm.config import build_config

    overrides = [
        f"data.image_size={size}",
        f"model.gradient_checkpointing={str(checkpointing).lower()}",
        f"model.use_flash_attention={str(flash).lower()}",
    ]
    return build_config(preset, overrides)


def lever_label(checkpointing: bool, flash: bool) -> str:
    return f"{'on ' if checkpointing else 'off'} | {'on ' if flash else 'off'}"


def estimates_table(preset: str, sizes: list[int]) -> str:
    from medddpm.models.memory import estimate_memory

    lines = [
        f"Estimates, `{preset}` model, batch 1, CUDA autocast rules (GiB; weights, gradients, AdamW and EMA "
        "included in the total; CUDA context and cuDNN workspace not):",
        "",
        "| size | checkpointing | flash | precision | activations | total peak |",
        "|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for checkpointing, flash, precision in LEVERS:
            e = estimate_memory(config_for(preset, size, checkpointing, flash), precision, 1, device="cuda")
            lines.append(
                f"| {size}³ | {lever_label(checkpointing, flash)} | {precision} | "
                f"{e.activations_gib:.2f} | {e.total_gib:.2f} |"
            )
    return "\n".join(lines)


def run_isolated(case: dict) -> dict:
    """One measurement in a fresh interpreter (peaks of earlier runs cannot leak into it)."""
    cmd = [sys.executable, __file__, "--one", json.dumps(case)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement {case} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_one(case: dict) -> dict:
    """Estimate and measure one (preset, size, levers, precision, device) case."""
    from medddpm.models.memory import estimate_memory, measure_training_step

    cfg = config_for(case["preset"], case["size"], case["checkpointing"], case["flash"])
    device = case["device"]
    estimate = estimate_memory(cfg, case["precision"], 1, device="cuda" if device == "cuda" else "cpu")
    measured = measure_training_step(cfg, case["precision"], 1, device=device, steps=case.get("steps", 1))
    return {
        **case,
        "estimate_activations_gib": estimate.activations_gib,
        "estimate_total_gib": estimate.total_gib,
        "measured_peak_gib": measured.peak_gib,
        "measured_state_gib": measured.state_gib,
        "measured_activations_gib": measured.activations_gib,
        "seconds_per_step": measured.seconds,
        "method": measured.method,
    }


def measured_table(results: list[dict], title: str) -> str:
    lines = [
        title,
        "",
        "| model | size | checkpointing | flash | precision | activations est. | activations meas. | "
        "peak est. | peak meas. | peak meas. / est. | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r["measured_peak_gib"] / r["estimate_total_gib"]
        held = r.get("measured_activations_gib")
        lines.append(
            f"| {r['preset'] or 'default'} | {r['size']}³ | {lever_label(r['checkpointing'], r['flash'])} | "
            f"{r['precision']} | {r['estimate_activations_gib']:.3f} | "
            f"{'-' if held is None else f'{held:.3f}'} | {r['estimate_total_gib']:.3f} | "
            f"{r['measured_peak_gib']:.3f} | {ratio:.2f} | {r['seconds_per_step']:.2f} |"
        )
    return "\n".join(lines)


def cpu_measurements(cases=CPU_CASES) -> list[dict]:
    return [
        run_isolated(
            {"preset": None, "size": s, "checkpointing": c, "flash": f, "precision": p, "device": "cpu"}
        )
        for s, c, f, p in cases
    ]


def cuda_measurements(
    preset: str, reduced: bool = False, cuda_sizes: tuple[int, ...] = (64, 128)
) -> tuple[str, list[dict]]:
    """Real peak memory and step time on CUDA at ``cuda_sizes`` with every lever on and off.

    Each result is also printed as one JSON line as soon as it is measured, so a run stopped by a time
    limit still leaves the cases it finished.

    ``reduced`` (or no CUDA device): the tiny config at 8³ on CPU, fp32, levers all off then all
    on, one step per case, all in this process; the CUDA-only parts are skipped.
    """
    import torch

    if torch.cuda.is_available() and not reduced:
        device, sizes, levers, steps = "cuda", list(cuda_sizes), LEVERS, 5
        title = f"CUDA measurements, `{preset}` model, batch 1, {torch.cuda.get_device_name()}:"
    else:
        device, sizes, steps = "cpu", [8], 1
        levers = [(False, False, "fp32"), (True, True, "fp32")]  # every lever off, then on
        preset = "tiny"
        title = "Reduced run (no CUDA device or --reduced): tiny model at 8³ on CPU:"
    results = []
    for size, (checkpointing, flash, precision) in itertools.product(sizes, levers):
        case = {
            "preset": preset,
            "size": size,
            "checkpointing": checkpointing,
            "flash": flash,
            "precision": precision,
            "device": device,
            "steps": steps,
        }
        try:
            results.append(run_isolated(case) if device == "cuda" else measure_one(case))
            print("measured:", json.dumps(results[-1]), flush=True)
        except RuntimeError as e:
            if "out of memory" not in str(e).lower():
                raise
            print(f"out of memory: {case}", file=sys.stderr)
    return title, results


def presets_table() -> str:
    from medddpm.config import PRESET_DIR, build_config, preset_header
    from medddpm.models.memory import estimate_autoencoder_memory, estimate_memory, estimate_sampling_memory
    from medddpm.models.spaces import config_space

    def size(shape) -> str:
        return "x".join(map(str, shape))

    rows = [
        "| preset | space | U-Net grid | precision | train (batch) | train-autoencoder (patch, batch) "
        "| sample (batch, largest decoder activation, slab voxels) | sized for |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        fits = preset_header(path.stem)["fits"]
        if "GPU" not in fits:
            continue
        cfg = build_config(path.stem)
        precision = "fp32" if cfg.train.precision == "auto" else cfg.train.precision
        train = estimate_memory(cfg, precision)
        grid = size(config_space(cfg).latent_size(cfg.data.image_size))
        autoencoder = sampling = "-"
        if cfg.model.space == "latent":
            a = estimate_autoencoder_memory(cfg, precision)
            s = estimate_sampling_memory(cfg, precision)
            autoencoder = f"{a.total_gib:.2f} ({size(a.patch)}, {cfg.train.batch_size})"
            sampling = (
                f"{s.total_gib:.2f} ({s.batch_size}, {size(s.largest_activation[1:])}, {s.slab_voxels})"
            )
        rows.append(
            f"| `{path.stem}` | {cfg.model.space} | {grid} | {precision} | {train.total_gib:.2f} "
            f"({cfg.train.batch_size}) | {autoencoder} | {sampling} | {fits} |"
        )
    return "\n".join(rows)


def machine() -> str:
    return f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="ct-128", help="Preset (or YAML) whose model is estimated.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="Edge lengths to estimate.")
    parser.add_argument("--no-cpu", action="store_true", help="Skip the CPU measurements.")
    parser.add_argument("--cuda", action="store_true", help="Measure real CUDA peaks and step times.")
    parser.add_argument("--reduced", action="store_true", help="With --cuda: the 8³ CPU form of it.")
    parser.add_argument("--presets", action="store_true", help="Estimate every stage of each GPU preset.")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one isolated measurement
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))))
        return

    import torch

    print(f"{time.strftime('%Y-%m-%d')}, {machine()}, torch {torch.__version__}")
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print()
    if args.presets:
        print(presets_table())
        return
    if args.cuda:
        title, results = cuda_measurements(args.config, args.reduced, tuple(args.sizes))
        print(measured_table(results, title))
        return
    print(estimates_table(args.config, args.sizes))
    if not args.no_cpu:
        print()
        title = (
            "CPU measurements (resident-memory high-water mark of one training step, fresh process each) "
            "next to the estimate with CPU autocast rules, default model, batch 1 (GiB):"
        )
        print(measured_table(cpu_measurements(), title))


if __name__ == "__main__":
    main()
