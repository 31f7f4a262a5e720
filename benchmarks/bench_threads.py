"""CPU threads for training and sampling: OpenMP's wait policy and the thread count, idle and under load.

OpenMP reads its settings when torch loads it, so each side is a fresh Python process with its own
environment. It trains the demo config (unconditional) on the demo cohort for ``--steps`` steps with
``medddpm.training.loop.train``, previews off, and then samples ``--volumes`` volumes from the run with
the config's sampler (``sample_to_folder``). Reported: seconds per training step (from metrics.csv,
after the first 20 steps) and per sampled volume. Sides:

- ``default``: torch's threads (one per core) and libgomp's default wait policy (an idle thread spins
  a while, then sleeps);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (an idle thread sleeps at once), what every medddpm
  command used to set;
- ``1 thread``: ``OMP_NUM_THREADS=1``, what ``--threads 1`` gives.

Each is measured under every ``--loads`` value: that many busy-looping processes beside it (0: an idle
machine; 1 on a 2-core machine: another program holding a core). Within a load the turns alternate the
order of the sides (A B C, C B A, ...) and the median of ``--repeats`` turns is reported.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_threads.py --steps 100 --volumes 4 --repeats 3 --loads 0 1
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIDES = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}
SETTINGS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")
TIMED_FROM = 20


def child(steps: int, volumes: int, cohort: Path, work: Path) -> dict:
    """One side's turn, in its own process: train, then sample; seconds per step and per volume."""
    import shutil

    from medddpm.config import build_config
    from medddpm.inference.sample_to_folder import sample_to_folder
    from medddpm.training.loop import train

    run, samples = work / "run", work / "samples"
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(samples, ignore_errors=True)
    cfg = build_config("demo", [f"train.max_steps={steps}", "train.preview_every=0"], {})
    train(cfg, cohort / "train", run)
    with open(run / "metrics.csv") as f:
        seconds = {int(r["step"]): float(r["seconds"]) for r in csv.DictReader(f)}
    step = (seconds[steps] - seconds[TIMED_FROM]) / (steps - TIMED_FROM)
    start = time.perf_counter()
    sample_to_folder(run, samples, volumes, device="cpu")
    return {"step": step, "volume": (time.perf_counter() - start) / volumes}


def turn(side: str, args, cohort: Path, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(SIDES[side])
    command = [sys.executable, __file__, "--child", str(cohort), str(work)]
    command += ["--steps", str(args.steps), "--volumes", str(args.volumes)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"side {side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import cpu_model

    return (
        f"{cpu_model()}, nproc {os.cpu_count()}, {platform.system()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def table(results: dict[int, dict[str, list[dict]]]) -> str:
    lines = [
        "| busy processes beside it | side | s / training step | vs default | s / sampled volume "
        "| vs default |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for load, sides in results.items():
        median = {
            side: {k: float(np.median([t[k] for t in turns])) for k in ("step", "volume")}
            for side, turns in sides.items()
        }
        for side, m in median.items():
            ref = median["default"]
            lines.append(
                f"| {load} | {side} | {m['step']:.3f} | {ref['step'] / m['step']:.2f}x "
                f"| {m['volume']:.2f} | {ref['volume'] / m['volume']:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per turn (timed after 20)")
    parser.add_argument("--volumes", type=int, default=4, help="volumes sampled per turn")
    parser.add_argument("--repeats", type=int, default=3, help="turns per side and load")
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1], help="busy processes beside the side")
    parser.add_argument("--json", type=Path, help="also write the turns as JSON")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("COHORT", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= TIMED_FROM:
        parser.error(f"--steps must be above {TIMED_FROM}")
    if args.child is not None:
        print(json.dumps(child(args.steps, args.volumes, *args.child)))
        return

    from medddpm.demo import make_cohort

    started = datetime.datetime.now(datetime.timezone.utc)
    results: dict[int, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        make_cohort(cohort, 64, 32, seed=0)
        for load in args.loads:
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
            try:
                results[load] = {side: [] for side in SIDES}
                for r in range(args.repeats):
                    for side in list(SIDES) if r % 2 == 0 else list(reversed(SIDES)):
                        got = turn(side, args, cohort, Path(tmp))
                        results[load][side].append(got)
                        print(
                            f"load {load} turn {r} {side:8s}: {got['step']:.3f} s/step, "
                            f"{got['volume']:.2f} s/volume"
                        )
            finally:
                for hog in hogs:
                    hog.kill()
    command = " ".join(sys.argv)
    print(f"\n- Date: {started:%Y-%m-%d %H:%M} UTC\n- Machine: {machine()}\n- Command: {command}\n")
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
