"""evaluate --run of a latent run: the autoencoder's ceiling (the real scans encoded and decoded by the
run's own autoencoder) is measured from the reconstructions, reported beside the synthetic set, and
refused when the run's autoencoder weights are not the ones it was trained with."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from medddpm.config import EvalConfig, build_config, load_config
from medddpm.data.scans import discover_scans
from medddpm.data.transforms import build_dataset
from medddpm.evaluation.ceiling import ceiling_sentence, gap_share
from medddpm.evaluation.measure import measure
from medddpm.models.autoencoder import load_autoencoder_file
from medddpm.models.spaces import AUTOENCODER_FILE
from tests.conftest import blob_volume, write_nifti
from tests.evaluation.test_measure import run_cli
from tests.training.test_latent import AE, latent_cfg

CFG = EvalConfig(max_pairs=3)


@pytest.fixture(scope="module")
def latent_eval(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(scans, RUN_DIR, synthetic folder, report folder): a tiny autoencoder, 4 latent diffusion steps,
    3 samples, and ``evaluate --run`` of them."""
    from medddpm.training.autoencoder import train_autoencoder
    from medddpm.training.loop import train

    root = tmp_path_factory.mktemp("ceiling")
    rng = np.random.default_rng(0)
    for i in range(4):
        write_nifti(root / "scans" / f"subject_{i}.nii.gz", blob_volume(rng))
    train_autoencoder(build_config("tiny", AE), root / "scans", root / "ae")
    train(latent_cfg(root / "ae"), root / "scans", root / "run")
    sample = ["sample", root / "run", "--output", root / "synth", "--num", "3", "--steps", "2"]
    code, out, err = run_cli(sample)
    assert code == 0, out + err
    report = root / "report"
    code, out, err = run_cli(
        ["evaluate", root / "scans", root / "synth", "-o", report, "--run", root / "run", "--max-pairs", "3"]
    )
    assert code == 0, out + err
    (root / "console.txt").write_text(out + err)
    return root / "scans", root / "run", root / "synth", report


def reconstruct_by_hand(scans: Path, run: Path, folder: Path) -> Path:
    """Each scan as training saw it, through the run's autoencoder in one whole-volume pass (16³: one
    window), written as ``sample`` writes MRI samples ([-1, 1] -> [0, 1]) into ``folder``."""
    cfg = load_config(run / "config.yaml")
    files = discover_scans(scans)
    x = torch.stack([item["image"] for item in build_dataset(cfg.data, files, None, 0)])
    autoencoder = load_autoencoder_file(run / AUTOENCODER_FILE, cfg.autoencoder)
    with torch.no_grad():
        x_hat = autoencoder.decode(autoencoder.encode(x)[0]).clamp(-1, 1)
    for i, volume in enumerate(x_hat):
        write_nifti(folder / f"r{i}.nii.gz", ((volume[0].numpy() + 1) / 2).astype(np.float32))
    return folder


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_the_ceiling_is_the_fid_of_the_reconstructions(latent_eval, tmp_path):
    scans, run, _, report = latent_eval
    metrics = json.loads((report / "metrics.json").read_text())
    ceiling = metrics["autoencoder_ceiling"]
    cfg = load_config(run / "config.yaml")
    assert ceiling["n"] == 4 and ceiling["autoencoder_sha256"] == cfg.latent.autoencoder_sha256
    assert ceiling["scale_factor"] == cfg.latent.scale_factor
    assert ceiling["fid_synthetic"] == metrics["fid"]
    # the same FID as evaluating a folder of reconstructions made by hand against the real scans
    by_hand = measure(scans, reconstruct_by_hand(scans, run, tmp_path / "recon"), CFG, run_dir=run)
    assert ceiling["fid"] == pytest.approx(by_hand.metrics["fid"], rel=1e-3)
    assert ceiling["mmd"] == pytest.approx(by_hand.metrics["mmd"], rel=1e-3, abs=1e-6)
    # a 2-step autoencoder reconstructs poorly: far from the real set, which is 0 from itself
    assert ceiling["fid"] > 1e-3 * metrics["fid"] and ceiling["fid"] > 1e-6
    r = ceiling["reconstruction"]
    assert math.isfinite(r["psnr"]) and r["mae"] > 0 and -1 <= r["correlation"] < 0.999
    assert ceiling["share_of_synthetic_fid"] == gap_share(ceiling["fid"], metrics["fid"])


def test_the_ceiling_is_in_the_report_and_on_the_console(latent_eval):
    _, _, _, report = latent_eval
    metrics = json.loads((report / "metrics.json").read_text())
    sentence = metrics["autoencoder_ceiling"]["summary"]
    assert sentence == ceiling_sentence(metrics) and "Autoencoder ceiling" in sentence
    html, md = (report / "report.html").read_text(), (report / "report.md").read_text()
    for text in (html, md):
        assert "<h2>Autoencoder ceiling</h2>" in text or "## Autoencoder ceiling" in text
        assert "Reconstruction vs real" in text and f"{metrics['autoencoder_ceiling']['fid']:.4g}" in text
    assert html.count("data:image/png;base64,") == 5  # the four figures and the reconstructions
    assert (
        "](montage_reconstruction.png)" in md
        and (report / "montage_reconstruction.png").stat().st_size > 1000
    )
    assert "Autoencoder ceiling" in " ".join((report.parent / "console.txt").read_text().split())
    assert any("autoencoder ceiling" in c for c in metrics["caveats"])


def test_the_sentence_says_how_much_of_the_gap_is_the_autoencoder():
    ceiling = {"n": 8, "fid": 10.0, "share_of_synthetic_fid": gap_share(10, 40)}
    m = {"fid": 40.0, "autoencoder_ceiling": ceiling}
    assert "about 25% is the autoencoder" in ceiling_sentence(m)
    m["autoencoder_ceiling"].update(fid=50.0, share_of_synthetic_fid=gap_share(50, 40))
    assert "the autoencoder, not the diffusion model, is what limits it" in ceiling_sentence(m)
    assert gap_share(1.0, 0.0) is None and ceiling_sentence({"fid": 1.0}) is None


def test_other_autoencoder_weights_exit_2_with_one_line_and_write_nothing(latent_eval, tmp_path):
    scans, run, synth, _ = latent_eval
    copy = shutil.copytree(run, tmp_path / "run")
    state = load_file(copy / AUTOENCODER_FILE)
    first = next(iter(state))
    state[first] = state[first] + 1.0
    save_file(state, copy / AUTOENCODER_FILE)
    code, out, err = run_cli(["evaluate", scans, synth, "-o", tmp_path / "report", "--run", copy])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "differ from the ones the run was trained with" in lines[0], err
    assert not (tmp_path / "report").exists()
