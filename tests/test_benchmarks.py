"""The benchmark scripts run end to end at their smallest settings (correctness only, no timing)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medddpm.runtime import torch_threads

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """Import benchmarks/<name>.py as a module (the folder is not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it is being executed
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a small shared machine two OpenMP threads mostly wait for each other."""
    with torch_threads(1):
        yield


def test_bench_train_smallest(tmp_path: Path, capsys):
    bench = load("bench_train")
    out = tmp_path / "train.json"
    args = ["--config", "tiny", "--sizes", "16", "--steps", "1", "--repeats", "1", "--warmup", "1"]
    args += ["--ref-workers", "0", "--num-scans", "2", "--device", "cpu", "--flops", "--json", str(out)]
    (result,) = bench.main(args)
    assert [s.name for s in result.sides] == ["tutorial", "medddpm"]
    assert all(s.steps_per_s > 0 and s.peak_memory_gib > 0 for s in result.sides)
    assert result.ratio == result.sides[1].ratio > 0 and result.sides[1].cpu_ratio > 0
    assert result.flops_per_step > 0
    assert "channels-last" in result.precision["medddpm"]  # the layout training picks on CPU
    saved = json.loads(out.read_text())
    assert saved["machine"]["nproc"] >= 1 and saved["results"][0]["size"] == 16
    assert "ratio medddpm / tutorial" in capsys.readouterr().out


def test_bench_spaces_smallest(tmp_path: Path, capsys):
    bench = load("bench_spaces")
    out = tmp_path / "spaces.json"
    args = ["--config", "tiny", "--sizes", "16", "--steps", "1", "--repeats", "1", "--sample-steps", "2"]
    args += ["--set", "autoencoder.channels=[8,16]", "--set", "autoencoder.norm_num_groups=4"]
    args += ["--set", "autoencoder.patch_size=16", "--num-scans", "2", "--device", "cpu", "--json", str(out)]
    (results,) = bench.main(args).values()
    assert [r.space for r in results] == ["pixel", "wavelet", "latent"]
    # what the U-Net sees: the volume, 8 Haar bands at half size, 4 latent channels at 1/f (f = 2 here)
    assert [r.unet_input for r in results] == [[1, 16, 16, 16], [8, 8, 8, 8], [4, 8, 8, 8]]
    for r in results:
        assert r.seconds_per_step > 0 and r.seconds_per_volume > 0
        assert r.train_peak_gib > 0 and r.sample_peak_gib > 0
    assert results[2].encode_seconds_per_scan > 0 and results[0].encode_seconds_per_scan is None
    saved = json.loads(out.read_text())
    assert [r["space"] for r in saved["results"]["16"]] == ["pixel", "wavelet", "latent"]
    assert "| latent | 4 × 8×8×8 |" in capsys.readouterr().out


OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 16.00 GiB. GPU 0 has a total capacity of 139.81 GiB of "
    "which 9.62 GiB is free. Including non-PyTorch memory, this process has 126.0 GiB memory in use."
)


@pytest.mark.parametrize(
    ("failing_call", "during", "extra"),
    [(1, "warm-up", []), (2, "timed turn 1", ["--no-memory"])],
    ids=["warm-up", "timed step"],
)
def test_bench_train_records_a_side_out_of_memory(
    failing_call: int, during: str, extra: list[str], tmp_path: Path, capsys, monkeypatch
):
    """The tutorial side running out of device memory is a result: its row says so, its memory is
    given back, medddpm is still measured (every turn), no ratio is computed, and the JSON says why."""
    import gc
    import weakref

    import torch

    bench = load("bench_train")
    calls, model = [], []
    step = bench.TutorialLoop.step

    def step_until_out_of_memory(self) -> None:
        calls.append(1)
        if len(calls) == failing_call:
            model.append(weakref.ref(self.model))
            raise torch.OutOfMemoryError(OOM_MESSAGE)
        step(self)

    monkeypatch.setattr(bench.TutorialLoop, "step", step_until_out_of_memory)
    out = tmp_path / "train.json"
    args = ["--config", "tiny", "--sizes", "16", "--steps", "1", "--repeats", "2", "--warmup", "1"]
    args += ["--ref-workers", "0", "--num-scans", "2", "--device", "cpu", "--json", str(out), *extra]
    (result,) = bench.main(args)

    tutorial, medddpm = result.sides
    assert tutorial.out_of_memory is not None and tutorial.out_of_memory.during == during
    assert tutorial.steps_per_s is None and len(calls) == failing_call  # not stepped again
    assert len(medddpm.steps_per_s_all) == 2 and medddpm.steps_per_s > 0
    assert medddpm.ratio is None and result.ratio is None and result.ratio_of_medians is None
    gc.collect()
    assert model[0]() is None, "the tutorial's model must be freed once it ran out of memory"

    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if " tutorial " in line)
    assert f"out of memory (in {during}, tried to allocate 16.00 GiB" in row
    assert "ratio medddpm / tutorial = not computed (tutorial ran out of memory)" in text
    saved = json.loads(out.read_text())["results"][0]
    assert saved["ratio"] is None
    assert saved["sides"][0]["out_of_memory"]["during"] == during
    assert saved["sides"][0]["out_of_memory"]["message"] == OOM_MESSAGE.splitlines()[0]
    assert saved["sides"][1]["out_of_memory"] is None and saved["sides"][1]["steps_per_s"] > 0
    if "--no-memory" not in extra:
        assert saved["sides"][1]["peak_memory_gib"] > 0  # the other side's profiled step still ran


def test_model_flops_counts_forward_and_backward():
    from medddpm.config import build_config

    bench = load("bench_train")
    cfg = build_config("tiny", ["train.batch_size=1"])
    one = bench.model_flops(cfg)
    cfg2 = build_config("tiny", ["train.batch_size=2"])
    assert bench.model_flops(cfg2) == pytest.approx(2 * one, rel=0.01)  # linear in the batch


def test_bench_data_smallest(tmp_path: Path):
    bench = load("bench_data")
    args = ["--config", "tiny", "--size", "16", "--steps", "1", "--repeats", "1", "--num-scans", "2"]
    args += ["--batch-size", "1", "--assembly-iterations", "3", "--device", "cpu"]
    args += ["--json", str(tmp_path / "d.json")]
    result = bench.main(args)
    assert set(result["median_step_seconds"]) == {"cached NIfTI", "in memory"}
    assert all(t > 0 for t in result["assembly_seconds"].values())
    assert json.loads((tmp_path / "d.json").read_text())["size"] == 16


def test_bench_sample_layout_smallest(capsys):
    bench = load("bench_sample_layout")
    (row,) = bench.main(["--configs", "tiny", "--volumes", "2", "--steps", "2", "--repeats", "1"])
    assert row["config"] == "tiny" and all(s > 0 for s in row["seconds"].values())
    assert 0 < row["diff"] < 1e-3  # the same weights in two layouts: rounding, not zero (the output moves)
    assert "| tiny (" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_gpu_check_dry_run(tmp_path: Path):
    env = dict(os.environ, GPU_CHECK_DRY="1", OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=2100
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = (tmp_path / "gpu_check.log").read_text()
    stages = [
        "train_bf16_compile",
        "train_bf16_compile_checkpointing",
        "train_vs_fp32_tutorial",
        "train_layouts",
    ]
    for stage in stages:
        assert f"== {stage}: exit 0" in log, log[-3000:]
        assert json.loads((tmp_path / f"{stage}.json").read_text())["results"][0]["ratio"] > 0
    assert "== data: exit 0" in log
    summary = (tmp_path / "summary.txt").read_text()
    assert "ratio medddpm / tutorial" in summary
    with tarfile.open(tmp_path / "gpu_check.tgz") as pack:  # everything in one file to bring back
        names = {Path(n).name for n in pack.getnames()}
    assert {"gpu_check.log", "summary.txt", "data.json", *(f"{s}.json" for s in stages)} <= names


def test_bench_sampling_quality_proxies_tell_real_from_wrong():
    """The proxies the sampler table rests on: held-out real data sits at the noise floor, a set of
    one mode or of shapeless noise does not, and the mode counter sees the real 50/50 split.

    The network's features z-score each volume, so they do not see the modes' intensities (spheres
    at 800 HU, cubes at 0), only their shapes: they tell noise from the real set, and the shape
    statistics and the mode counter tell a one-mode set."""
    bench = load("bench_sampling")
    real_a = bench.to_model_space(bench.toy_set(seed=2, n=16))
    real_b = bench.to_model_space(bench.toy_set(seed=3, n=16))
    real_c = bench.to_model_space(bench.toy_set(seed=4, n=16))
    quality = bench.Quality(real_a, real_b)

    assert list(bench.classify(real_c)) == ["bright", "grey"] * 8
    spheres_only = bench.to_model_space(bench.toy_set(seed=5, n=32)[::2])
    noise = np.random.default_rng(0).uniform(-1, 1, real_c.shape).astype(np.float32)
    same, one_mode, shapeless = quality(real_c), quality(spheres_only), quality(noise)
    assert (same["bright"], same["grey"], same["other"]) == (0.5, 0.5, 0.0)
    assert one_mode["bright"] == 1.0 and shapeless["other"] == 1.0
    assert abs(same["mmd_stats"]) < one_mode["mmd_stats"] < shapeless["mmd_stats"]
    assert abs(same["mmd_net"]) < shapeless["mmd_net"] and abs(one_mode["mmd_net"]) < shapeless["mmd_net"]


def test_bench_sampling_smallest(tmp_path: Path, monkeypatch, capsys):
    bench = load("bench_sampling")
    args = ["--out", str(tmp_path), "--train-steps", "2", "--n-train", "4", "--num", "4"]
    args += ["--batch-size", "4", "--only", "dpm++-10", "dpm++-25-eta1", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", ["bench_sampling.py", *args])
    bench.main()
    out = capsys.readouterr().out
    assert "| dpm++ | 10 | 0 |" in out and "| dpm++ | 25 | 1 |" in out and "noise floor" in out
    assert np.load(tmp_path / "samples-dpm++-10.npy").shape == (4, 16, 16, 16)
    assert (tmp_path / "run" / "checkpoints" / "step-00000002").is_dir()


def test_bench_convergence_quick(tmp_path: Path):
    """Two recipes, two turns at 16³: a CSV row per recipe and evaluation, curves and a table."""
    pytest.importorskip("nilearn")
    bench = load("bench_convergence")
    rows = bench.main(["--output", str(tmp_path), "--quick", "--recipes", "tutorial,combo"])
    assert [(r["recipe"], r["turn"]) for r in rows] == [
        ("tutorial", 1),
        ("combo", 1),
        ("tutorial", 2),
        ("combo", 2),
    ]
    for name in ("tutorial", "combo"):
        mine = [r for r in rows if r["recipe"] == name]
        assert 0 < mine[0]["cpu_seconds"] < mine[1]["cpu_seconds"] and mine[0]["steps"] <= mine[1]["steps"]
        assert all(np.isfinite([r["fid"], r["nn_corr"], r["ms_ssim_synth"]]).all() for r in mine)
    with (tmp_path / "convergence.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
    assert (tmp_path / "convergence.png").stat().st_size > 0
    table = (tmp_path / "convergence.md").read_text()
    assert "| tutorial |" in table and "| combo |" in table and "tutorial" in table


def test_bench_convergence_nearest_correlation_is_pearson():
    bench = load("bench_convergence")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 1, 4, 4, 4)), rng.normal(size=(5, 1, 4, 4, 4))
    r = np.corrcoef(a.reshape(3, -1), b.reshape(5, -1))[:3, 3:]
    assert bench.nearest_correlation(torch.tensor(a), torch.tensor(b)) == pytest.approx(np.median(r.max(1)))
    with pytest.raises(SystemExit, match="unknown recipe"):
        bench.main(["--output", "/nonexistent-unused", "--recipes", "nope"])


def test_bench_convergence_evaluation_turns():
    """--eval-turns picks the turns measured, --eval-every spaces them; the last turn is always measured."""
    bench = load("bench_convergence")

    def measured(*argv: str) -> list[int]:
        args = bench.parse_args(["--output", "unused", *argv])
        return [t for t in range(1, 17) if bench.due(t, 16, args)]

    assert measured("--eval-turns", "1,2,4,8") == [1, 2, 4, 8, 16]
    assert measured("--eval-every", "5") == [5, 10, 15, 16]
    assert measured("--eval-turns", "3", "--eval-every", "5") == [3, 16]


def test_bench_convergence_recipes_keep_their_recorded_sampling():
    """Each recipe samples as when RESULTS.md recorded it, whatever configs/demo.yaml says today: the
    sampler's own eta (the demo's eta 1 would turn dpm++ into SDE-DPM-Solver++)."""
    bench = load("bench_convergence")
    for name in bench.RECIPES:
        cfg = bench.recipe_config(name, 32, 60.0, quick=False)
        assert cfg.sample.eta is None, name
    assert bench.recipe_config("flow", 32, 60.0, quick=False).sample.sampler == "euler"


def test_bench_features_smallest(tmp_path: Path, capsys):
    from tests.conftest import blob_volume, write_nifti

    bench = load("bench_features")
    rng = np.random.default_rng(0)
    for folder in ("cohort/train", "cohort/heldout", "synth"):
        for i in range(7):
            write_nifti(tmp_path / folder / f"s{i}.nii.gz", blob_volume(rng, (16, 16, 16)))
    bench.main(
        ["--cohort", str(tmp_path / "cohort"), "--synthetic", str(tmp_path / "synth"), "--threads", "1"]
    )
    out = capsys.readouterr().out
    assert (
        "| training scans, background floor 0.001 |" in out and f"| synthetic: {tmp_path / 'synth'} |" in out
    )
    assert out.count("\n| ") == 8  # the header, 6 changes, 1 synthetic set
    x = torch.zeros(1, 1, 4, 4, 4)
    x[0, 0, 1:3, 1:3, 1:3] = 2.0
    z = bench.nonzero_normalize(x)
    assert torch.equal(z[x == 0], torch.zeros(56)) and torch.allclose(z[x != 0], torch.zeros(8))
