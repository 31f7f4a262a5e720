"""Golden check: a fixed-seed train -> sample -> evaluate through the CLI gives the recorded results.

The numbers in ``golden.json`` were recorded from the command line, so they pin behaviour, not
code: a refactoring that changes a weight, a voxel, a manifest field or a metric fails here. On the
machine and torch build that recorded them (the ``fingerprint``) every weight file and every
volume must be bit-identical (sha256 of the raw tensors); elsewhere a CPU with other vector units
rounds convolutions differently, so the summary statistics are compared with a tight tolerance.

Regenerate (only when a change of numbers is intended, and say why in the commit):
``MEDDDPM_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medddpm.cli import main
from medddpm.config import LEGACY_VALUES
from medddpm.runtime import torch_threads
from tests.conftest import blob_volume, write_nifti

GOLDEN = Path(__file__).with_name("golden.json")
SAMPLERS = ("ddpm", "ddim", "dpm++")
MANIFEST_VOLATILE = {"created", "seconds_per_volume", "wall_seconds", "versions", "device", "checkpoint"}
RTOL = 1e-4  # across CPUs: convolution round-off after 4 optimizer steps and 5 sampler steps
RECORDED_WITH = {
    "diffusion.prediction": "eps",
    "diffusion.schedule": "linear",
    "train.lr": 1e-4,
    "train.ema_decay": 0.999,
    "train.ema_warmup": False,
    "sample.sampler": "dpm++",
    "sample.steps": 5,
    **LEGACY_VALUES,
}
"""The recipe golden.json was recorded with (the code defaults of the time, and tiny.yaml's sampler),
pinned with --set so that a change of defaults leaves this a check of the code path, not of them."""
ADDED_SINCE = LEGACY_VALUES
"""Config fields added after golden.json was recorded, with the value the code had before them: each
manifest's config must hold that value, and is then compared without them."""
RECORDED_SECTIONS = {"data", "model", "diffusion", "train", "sample", "eval"}
"""The config sections of golden.json; sections added since (conditions, autoencoder) are options this
run does not use, and the weights and samples above would show it if they changed anything."""


def fingerprint() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"torch {torch.__version__} | {torch.backends.cpu.get_cpu_capability()} | {cpu}"


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> dict[str, float | str]:
    h = hashlib.sha256()
    total = 0.0
    total_abs = 0.0
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(key.encode())
        h.update(t.numpy().tobytes())
        total += float(t.double().sum())
        total_abs += float(t.double().abs().sum())
    return {"sha256": h.hexdigest(), "sum": total, "abs_sum": total_abs}


def _array_digest(a: np.ndarray) -> dict[str, float | str]:
    a = np.ascontiguousarray(a)
    return {
        "sha256": hashlib.sha256(a.tobytes()).hexdigest(),
        "mean": float(a.astype(np.float64).mean()),
        "std": float(a.astype(np.float64).std()),
    }


def _cli(*args: str) -> None:
    try:
        main(list(args))
    except SystemExit as e:
        assert e.code in (0, None), f"medddpm {' '.join(args)} exited with {e.code}"


def _record(root: Path) -> dict:
    rng = np.random.default_rng(7)
    for i in range(7):  # 7 real and 7 synthetic volumes: enough for PRDC's 5 nearest neighbours
        write_nifti(root / "scans" / f"s{i}.nii.gz", blob_volume(rng))
    run = root / "run"
    pins = [a for key, value in RECORDED_WITH.items() for a in ("--set", f"{key}={json.dumps(value)}")]
    _cli("train", str(root / "scans"), "-o", str(run), "-c", "tiny", "--max-steps", "4", "--seed", "3", *pins)
    ckpt = run / "checkpoints" / "step-00000004"
    out: dict = {"fingerprint": fingerprint(), "weights": {}, "samples": {}, "manifests": {}}
    for name in ("model.safetensors", "ema.safetensors"):
        out["weights"][name] = _tensor_digest(load_file(str(ckpt / name)))
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    out["step"] = state.get("step")
    out["losses"] = [
        float(line.split(",")[1]) for line in (run / "metrics.csv").read_text().splitlines()[1:] if line
    ]
    for sampler in SAMPLERS:
        folder = root / f"synth-{sampler}"
        n = "7" if sampler == "dpm++" else "2"
        _cli("sample", str(run), "-o", str(folder), "-n", n, "--seed", "11", "--sampler", sampler)
        for f in sorted(folder.glob("sample_*.nii.gz")):
            out["samples"][f"{sampler}/{f.name}"] = _array_digest(np.asarray(nib.load(str(f)).dataobj))
        manifest = json.loads((folder / "manifest.json").read_text())
        kept = {k: v for k, v in manifest.items() if k not in MANIFEST_VOLATILE}
        kept["samples"] = [{k: v for k, v in r.items() if k != "seconds"} for r in kept["samples"]]
        kept["recipe"] = {k: v for k, v in kept["recipe"].items() if k != "sha256"}
        for dotted, value in ADDED_SINCE.items():
            section, name = dotted.split(".")
            assert kept["config"][section].pop(name) == value, f"{sampler} manifest: {dotted}"
        for section in set(kept["config"]) - RECORDED_SECTIONS:
            del kept["config"][section]
        out["manifests"][sampler] = kept
    _cli(
        "evaluate",
        str(root / "scans"),
        str(root / "synth-dpm++"),
        "-o",
        str(root / "report"),
        "--run",
        str(run),
    )
    metrics = json.loads((root / "report" / "metrics.json").read_text())
    out["metrics"] = {
        k: v for k, v in metrics.items() if k not in ("version", "created", "seconds", "timings")
    }
    # Paths of this test's temporary folder are not behaviour.
    return json.loads(json.dumps(out).replace(str(root), "ROOT"))


def _close(expected, actual, path: str, exact: bool) -> list[str]:
    """Differences between two JSON-like values; floats within RTOL unless ``exact``."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        diffs = []
        for k in sorted(set(expected) | set(actual)):
            if k == "sha256" and not exact:
                continue
            if k not in expected or k not in actual:
                diffs.append(f"{path}.{k}: only in {'golden' if k in expected else 'this run'}")
            else:
                diffs += _close(expected[k], actual[k], f"{path}.{k}", exact)
        return diffs
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            d
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for d in _close(e, a, f"{path}[{i}]", exact)
        ]
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        same = expected == actual if exact else np.isclose(actual, expected, rtol=RTOL, atol=1e-6)
        return [] if same else [f"{path}: golden {expected!r}, now {actual!r}"]
    return [] if expected == actual else [f"{path}: golden {expected!r}, now {actual!r}"]


def test_train_sample_evaluate_match_golden(tmp_path: Path):
    with torch_threads(1):
        actual = _record(tmp_path)
    if os.environ.get("MEDDDPM_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    exact = golden["fingerprint"] == actual["fingerprint"]
    diffs = _close(
        {k: v for k, v in golden.items() if k != "fingerprint"},
        {k: v for k, v in actual.items() if k != "fingerprint"},
        "golden",
        exact,
    )
    assert not diffs, f"{len(diffs)} differences ({'bitwise' if exact else f'rtol {RTOL}'}):\n" + "\n".join(
        diffs[:30]
    )
