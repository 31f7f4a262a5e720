"""The report on made-up numbers: wording that follows them, self-contained HTML, Markdown with PNGs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

from medddpm.evaluation.measure import Measurement, VolumeSet, caveats
from medddpm.evaluation.report import FIGURES, summary_table, summary_text, write_report
from medddpm.evaluation.specs import METRICS

LABEL = "random-init resnet10 (seed 0): comparable only with itself"


@pytest.fixture
def metrics() -> dict:
    m = {
        "fid": 12.3456,
        "ms_ssim_synthetic": 0.42,
        "ms_ssim_real": 0.40,
        "mmd": 0.0123,
        "precision": 0.8,
        "recall": 0.6,
        "density": 1.05,
        "coverage": 0.7,
        "n_real": 6,
        "n_synthetic": 8,
        "ms_ssim_synthetic_ci95": [0.39, 0.45],
        "ms_ssim_real_ci95": [0.37, 0.43],
        "ms_ssim_pairs": {"real": 15, "synthetic": 28},
        "fid_covariance_rank_deficient": True,
        "mmd_settings": {"estimator": "unbiased MMD²", "kernel": "rbf", "bandwidth": 0.8},
        "nearest_k": 5,
        "prdc_unavailable": None,
        "feature_extractor": {
            "name": "resnet10",
            "label": LABEL,
            "weights_sha256": "random-init seed 0",
            "weights_path": None,
            "feature_dim": 512,
            "implementation": "monai.networks.nets.resnet10 in MedicalNet's configuration",
        },
        "ms_ssim_settings": {
            "kernel_size": 3,
            "kernel_sigma": 1.5,
            "num_scales": 3,
            "weights": [0.07, 0.45, 0.48],
            "data_range": 1.0,
            "max_pairs": 500,
            "seed": 0,
        },
        "preprocessing": {
            "source": "default (no --run)",
            "description": "RAS, no resampling, per-volume 0.5 / 99.5 percentiles mapped to [0, 1]",
            "same_shape_required": True,
            "data": {"spacing": None},
        },
        "inputs": {
            "real_dir": "/data/real",
            "synthetic_dir": "/data/synthetic",
            "run": None,
            "volume_shape": [16, 16, 16],
            "voxel_size_mm": {"real": [1.0, 1.0, 1.0], "synthetic": [1.0, 1.0, 1.0]},
        },
        "created": "2026-01-01T00:00:00+00:00",
        "version": {"medddpm": "0.1.0", "torch": "2.13.0", "platform": "Linux"},
    }
    m["caveats"] = caveats(m)
    return m


def volume_set(name: str, n: int, seed: int) -> VolumeSet:
    volumes = torch.rand(n, 1, 16, 16, 16, generator=torch.Generator().manual_seed(seed))
    files = [Path(f"/data/{name}/scan_{i}.nii.gz") for i in range(n)]
    return VolumeSet(name, Path(f"/data/{name}"), files, volumes, (1.0, 1.0, 1.0))


def measurement(metrics: dict, real: VolumeSet, synth: VolumeSet, values: dict) -> Measurement:
    return Measurement(metrics, real, synth, features={}, ms_ssim_values=values, seconds={}, cpu_seconds={})


def test_values_are_formatted_with_intervals(metrics):
    assert METRICS["fid"].format(metrics) == "12.35"
    assert METRICS["ms_ssim_real"].format(metrics) == "0.400 (95% CI 0.370–0.430)"
    assert METRICS["precision"].format(metrics) == "0.80"
    metrics["precision"] = None
    assert METRICS["precision"].format(metrics) == "unavailable"


def test_summary_follows_the_numbers(metrics):
    text = summary_text(metrics)
    assert "8 synthetic volumes were compared with 6 real volumes" in text
    assert LABEL in text and "dominated by estimation error" in text
    assert "about as diverse as the real ones" in text  # the intervals overlap
    assert "80% of the synthetic volumes" in text

    collapsed = copy.deepcopy(metrics)
    collapsed.update(ms_ssim_synthetic=0.9, ms_ssim_synthetic_ci95=[0.88, 0.92])
    assert "less diverse" in summary_text(collapsed) and "mode collapse" in summary_text(collapsed)

    noisy = copy.deepcopy(metrics)
    noisy.update(ms_ssim_synthetic=0.1, ms_ssim_synthetic_ci95=[0.08, 0.12])
    assert "differ more from one another" in summary_text(noisy)

    few = copy.deepcopy(metrics)
    few.update(precision=None, recall=None, density=None, coverage=None, fid_covariance_rank_deficient=False)
    assert "could not be computed" in summary_text(few) and "dominated" not in summary_text(few)


def test_caveats_follow_the_inputs(metrics):
    text = " ".join(metrics["caveats"])
    assert "randomly initialised" in text and "rank-deficient" in text and "memorisation" in text
    assert "not of the original MedicalNet code" in text and "MONAI's MMDMetric" in text
    # one note per metric, in the tables' order; PRDC's four metrics share theirs
    starts = ("FID: with", "MMD² uses", "Precision, recall, density and coverage (k = 5)", "MS-SSIM uses")
    at = [[i for i, c in enumerate(metrics["caveats"]) if c.startswith(s)] for s in starts]
    assert [len(i) for i in at] == [1, 1, 1, 1] and [i[0] for i in at] == sorted(i[0] for i in at)

    trained = copy.deepcopy(metrics)
    trained["feature_extractor"].update(weights_sha256="ab" * 32, label="MedicalNet resnet10 (sha256 abab…)")
    trained.update(fid_covariance_rank_deficient=False, prdc_unavailable="too few volumes")
    trained["inputs"]["voxel_size_mm"]["synthetic"] = [2.0, 2.0, 2.0]
    text = " ".join(caveats(trained))
    assert "randomly initialised" not in text and "rank-deficient" not in text
    assert "unavailable: too few volumes" in text and "voxel sizes differ" in text


def test_console_table_has_directions_and_label(metrics):
    console = Console(record=True, width=140)
    console.print(summary_table(metrics))
    text = console.export_text()
    assert "↓ lower is better" in text and "↑ higher is better" in text and "closer to real" in text
    assert LABEL in text


def test_documents_and_figures(metrics, tmp_path):
    real, synth = volume_set("real", 6, 0), volume_set("synthetic", 8, 1)
    values = {"real": [0.4, 0.41, 0.39], "synthetic": [0.42, 0.43, 0.41, 0.44]}
    paths = write_report(tmp_path, measurement(metrics, real, synth, values))
    for name in FIGURES.values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    html = paths["html"].read_text()
    assert html.count('src="data:image/png;base64,') == 4
    assert not re.search(r"(src|href)=\"(?!data:)", html)  # nothing loaded from elsewhere
    assert LABEL in html and "rank-deficient" in html and "closer to real is better" in html
    assert html.count("<tr>") >= 9  # header and eight metrics

    md = paths["markdown"].read_text()
    assert LABEL in md and "## Caveats" in md
    for name in FIGURES.values():
        assert f"]({name})" in md
    assert md.count("| ↓ lower is better |") == 2


def test_a_bad_number_writes_no_report(metrics, tmp_path):
    metrics["fid"] = float("nan")
    with pytest.raises(ValueError):
        real, synth = volume_set("real", 2, 0), volume_set("synthetic", 2, 1)
        write_report(tmp_path, measurement(metrics, real, synth, {}))
    assert not any(tmp_path.iterdir())
