"""medddpm evaluate end to end on tiny folders: metrics.json, the report, the feature label, bad input."""

from __future__ import annotations

import io
import json
import math
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from medddpm.cli import main
from medddpm.config import EvalConfig, load_config
from medddpm.errors import InputError
from medddpm.evaluation.measure import check_options, eval_config, measure
from medddpm.evaluation.metrics import fid_from_features
from medddpm.evaluation.specs import METRICS
from medddpm.output_folder import REPORT_FOLDER, check_output, publish_folder
from tests.conftest import blob_volume, write_nifti

SHAPE = (16, 16, 16)
N = 6
LABEL = "random-init resnet10 (seed 0): comparable only with itself"
KEYS = (
    "fid", "ms_ssim_synthetic", "ms_ssim_real", "mmd", "precision", "recall", "density", "coverage",
    "n_real", "n_synthetic", "feature_extractor", "ms_ssim_settings", "version",
    "ms_ssim_synthetic_ci95", "ms_ssim_real_ci95", "inputs", "preprocessing", "caveats",
)  # fmt: skip


def write_set(folder: Path, volumes: list[np.ndarray], spacing=(2.0, 2.5, 3.0)) -> Path:
    for i, v in enumerate(volumes):
        write_nifti(folder / f"vol_{i}.nii.gz", v.astype(np.float32), spacing=spacing)
    return folder


def blobs(n: int, seed: int, shape=SHAPE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [blob_volume(rng, shape) for _ in range(n)]


def noisy(volumes: list[np.ndarray], sigma: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [v + rng.normal(0, sigma, v.shape).astype(np.float32) for v in volumes]


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
        raise SystemExit(0)
    return e.value.code or 0, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("real") / "real", blobs(N, seed=0))


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """Other blobs, with noise: a set the metrics should tell apart from the real one."""
    return write_set(tmp_path_factory.mktemp("synth") / "synth", noisy(blobs(N, seed=1), 15.0, seed=2))


@pytest.fixture(scope="module")
def cli_report(real_dir, synth_dir, tmp_path_factory):
    report = tmp_path_factory.mktemp("out") / "report"
    code, out, err = run_cli(
        ["evaluate", real_dir, synth_dir, "--output", report, "--save-features", "--max-pairs", "10"]
    )
    return report, code, out + err


def test_cli_writes_every_metric(cli_report):
    report, code, console = cli_report
    assert code == 0, console
    metrics = json.loads((report / "metrics.json").read_text())
    for key in KEYS:
        assert key in metrics, key
    assert metrics["n_real"] == metrics["n_synthetic"] == N
    for key in (
        "fid",
        "mmd",
        "ms_ssim_synthetic",
        "ms_ssim_real",
        "precision",
        "recall",
        "density",
        "coverage",
    ):
        assert math.isfinite(metrics[key]), key
    assert metrics["fid"] > 0 and metrics["fid_covariance_rank_deficient"]  # 6 volumes, 512 features
    assert metrics["ms_ssim_pairs"] == {"real": 10, "synthetic": 10}
    lo, hi = metrics["ms_ssim_real_ci95"]
    assert lo <= metrics["ms_ssim_real"] <= hi
    fe = metrics["feature_extractor"]
    assert (
        fe["name"] == "resnet10" and fe["weights_sha256"] == "random-init seed 0" and fe["feature_dim"] == 512
    )
    assert metrics["ms_ssim_settings"]["kernel_size"] >= 3 and metrics["ms_ssim_settings"]["num_scales"] >= 1
    assert metrics["version"]["medddpm"] and metrics["version"]["torch"] and metrics["version"]["monai"]
    assert metrics["inputs"]["volume_shape"] == list(SHAPE) and metrics["inputs"]["run"] is None
    assert any("rank-deficient" in c for c in metrics["caveats"])
    # the console shows the table with directions and the report's path
    assert "↓ lower is better" in console and "closer to real" in console
    assert str(report / "report.html") in console.replace("\n", "")


def test_report_is_self_contained(cli_report):
    report = cli_report[0]
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html
    md = (report / "report.md").read_text()
    for name in (
        "montage_real.png",
        "montage_synthetic.png",
        "intensity_histograms.png",
        "ms_ssim_distributions.png",
    ):
        assert f"]({name})" in md and (report / name).stat().st_size > 1000
    for text in (html, md):
        assert "Caveats" in text and "↑ higher is better" in text and "closer to real is better" in text


def test_random_init_label_in_every_output(cli_report):
    report, _, console = cli_report
    for name in ("metrics.json", "report.html", "report.md"):
        assert LABEL in (report / name).read_text(), name
    assert LABEL in " ".join(console.split())


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_saved_features(cli_report):
    report = cli_report[0]
    saved = np.load(report / "features.npz")
    assert saved["real"].shape == (N, 512) and saved["synthetic"].shape == (N, 512)
    metrics = json.loads((report / "metrics.json").read_text())
    with threadpool_limits(1, user_api="blas"):  # as evaluate computes it; fast on a busy machine
        assert fid_from_features(saved["real"], saved["synthetic"]) == pytest.approx(metrics["fid"], rel=1e-6)


def test_fid_is_zero_for_a_copy_and_grows_with_noise(real_dir, tmp_path):
    copy = shutil.copytree(real_dir, tmp_path / "copy")
    real = blobs(N, seed=0)
    cfg = EvalConfig(max_pairs=3)
    fids = [measure(real_dir, copy, cfg).metrics["fid"]]
    for sigma in (10.0, 40.0):
        folder = write_set(tmp_path / f"noise{sigma:g}", noisy(real, sigma, seed=3))
        fids.append(measure(real_dir, folder, cfg).metrics["fid"])
    assert fids[0] < 1e-6 * fids[1]
    assert fids[0] < fids[1] < fids[2], fids


def test_run_preprocesses_both_sets_with_the_runs_transforms(tiny_run, tmp_path):
    # the run's scans are 20x18x22; its tiny config brings them to 16³, the size samples are written at
    scans = tiny_run.parent / "scans"
    rng = np.random.default_rng(5)
    synth = write_set(tmp_path / "samples", [rng.uniform(0, 1, SHAPE).astype(np.float32) for _ in range(4)])
    report = tmp_path / "report"

    code, _, err = run_cli(["evaluate", scans, synth, "--output", report])
    assert code == 2 and "differs" in err and "--run" in err and not report.exists()

    code, out, err = run_cli(["evaluate", scans, synth, "--output", report, "--run", tiny_run])
    assert code == 0, err
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["inputs"]["run"] == str(tiny_run.resolve())
    assert "autoencoder_ceiling" not in metrics  # a pixel run has no autoencoder
    assert metrics["inputs"]["volume_shape"] == [16, 16, 16]
    assert "run" in metrics["preprocessing"]["source"]
    assert metrics["preprocessing"]["data"]["image_size"] == [16, 16, 16]
    assert metrics["ms_ssim_settings"]["max_pairs"] == 20  # the run's eval section
    # 4 volumes a set: PRDC (k = 5) is reported unavailable, the rest is there
    assert metrics["precision"] is None and "at least 6" in metrics["prdc_unavailable"]
    assert math.isfinite(metrics["fid"]) and math.isfinite(metrics["ms_ssim_synthetic"])
    assert "unavailable" in (report / "report.html").read_text()

    # the command's flags override the run's eval section
    code, _, err = run_cli(
        ["evaluate", scans, synth, "-o", report, "--run", tiny_run, "--max-pairs", "4", "--seed", "2"]
        + ["--overwrite"]
    )
    assert code == 0, err
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["ms_ssim_settings"]["max_pairs"] == 4 and metrics["seed"] == 2
    assert metrics["feature_extractor"]["label"].startswith("random-init resnet10 (seed 2)")


def _bad_inputs(tmp: Path, real_dir: Path, synth_dir: Path) -> dict[str, tuple[list, Path]]:
    """Each case: CLI arguments and the path its one-line error must name."""
    (tmp / "empty").mkdir(parents=True)
    single = write_set(tmp / "single", blobs(1, seed=4))
    other_shape = shutil.copytree(synth_dir, tmp / "other_shape")
    write_set(tmp / "odd", [blobs(1, seed=6, shape=(16, 16, 18))[0]])
    shutil.move(tmp / "odd" / "vol_0.nii.gz", other_shape / "zz_odd.nii.gz")
    corrupt = shutil.copytree(synth_dir, tmp / "corrupt")
    data = (corrupt / "vol_2.nii.gz").read_bytes()
    (corrupt / "vol_2.nii.gz").write_bytes(data[: len(data) // 2])
    weights = tmp / "weights.pth"
    weights.write_bytes(b"not a checkpoint at all")
    return {
        "empty folder": ([real_dir, tmp / "empty"], tmp / "empty"),
        "single volume": ([real_dir, single], single),
        "shapes differ": ([real_dir, other_shape], other_shape / "zz_odd.nii.gz"),
        "bad weights": ([real_dir, synth_dir, "--feature-weights", weights], weights),
        "corrupt scan": ([real_dir, corrupt], corrupt / "vol_2.nii.gz"),
    }


@pytest.mark.parametrize(
    "case", ["empty folder", "single volume", "shapes differ", "bad weights", "corrupt scan"]
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, real_dir, synth_dir, tmp_path):
    args, named = _bad_inputs(tmp_path / "inputs", real_dir, synth_dir)[case]
    out_parent = tmp_path / "out"
    code, out, err = run_cli(["evaluate", *args, "--output", out_parent / "report"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(named) in lines[0], err
    assert not out_parent.exists() or not any(out_parent.iterdir())


def test_report_folder_rules(real_dir, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="--overwrite"):
        check_output(taken, REPORT_FOLDER, overwrite=False, inputs=[real_dir])
    with pytest.raises(InputError, match="notes.txt"):
        check_output(taken, REPORT_FOLDER, overwrite=True, inputs=[real_dir])
    with pytest.raises(InputError, match="overlaps"):
        check_output(real_dir / "report", REPORT_FOLDER, overwrite=True, inputs=[real_dir])
    with pytest.raises(InputError, match="overlaps"):
        check_output(real_dir.parent, REPORT_FOLDER, overwrite=True, inputs=[real_dir])
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_output(tmp_path / "file", REPORT_FOLDER, overwrite=True, inputs=[real_dir])

    # --overwrite replaces an earlier report as a whole
    old = tmp_path / "report"
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    (old / "montage_real.png").write_bytes(b"png")
    check_output(old, REPORT_FOLDER, overwrite=True, inputs=[real_dir])
    new = tmp_path / ".report-tmp"
    new.mkdir()
    (new / "metrics.json").write_text('{"fid": 1}')
    publish_folder(new, old)
    assert sorted(p.name for p in old.iterdir()) == ["metrics.json"] and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "report", "taken"]


# metrics.json's top-level keys that are not metrics: set sizes, settings, provenance
CONTEXT_KEYS = {
    "n_real", "n_synthetic", "ms_ssim_pairs", "fid_covariance_rank_deficient", "mmd_settings", "nearest_k",
    "prdc_unavailable", "feature_extractor", "ms_ssim_settings", "preprocessing", "inputs", "seed", "device",
    "created", "version", "caveats", "seconds",
}  # fmt: skip


def test_every_metric_in_metrics_json_has_one_spec(cli_report):
    metrics = json.loads((cli_report[0] / "metrics.json").read_text())
    intervals = {spec.interval_key: spec for spec in METRICS.values() if spec.interval is not None}
    metric_keys = [k for k in metrics if k not in CONTEXT_KEYS and k not in intervals]
    assert metric_keys == list(METRICS)  # each exactly once, in the table's order
    # any other number at the top level would be a metric without a spec
    numbers = {k for k, v in metrics.items() if isinstance(v, float)}
    assert numbers <= set(METRICS)
    assert all(isinstance(metrics[k], list) and len(metrics[k]) == 2 for k in intervals)


def test_eval_config_defaults_run_then_flags(tiny_run, tmp_path):
    assert eval_config() == EvalConfig()
    run = load_config(tiny_run / "config.yaml").eval
    assert run.max_pairs == 20 and eval_config(tiny_run) == run  # the run's section is the base
    flags = {"eval.max_pairs": 3, "eval.seed": None, "eval.features": "resnet18"}
    cfg = eval_config(tiny_run, flags)
    assert (cfg.max_pairs, cfg.seed, cfg.features, cfg.nearest_k) == (3, run.seed, "resnet18", run.nearest_k)
    assert eval_config(None, {"eval.seed": 7}) == EvalConfig(seed=7)


def test_eval_config_refuses_what_the_user_can_fix(real_dir, tmp_path):
    with pytest.raises(InputError, match="network 'resnet99': choose one of resnet10, resnet18"):
        eval_config(None, {"eval.features": "resnet99"})
    with pytest.raises(InputError, match="no such run folder"):
        eval_config(tmp_path / "nope")
    with pytest.raises(InputError, match="not a run folder: it has no config.yaml"):
        eval_config(real_dir, {"eval.seed": 1})
    with pytest.raises(InputError, match="--max-pairs must be at least 1, got 0"):
        check_options(EvalConfig(max_pairs=0), "cpu")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        check_options(EvalConfig(), "tpu")
