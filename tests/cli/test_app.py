"""The command line as a user meets it: exit codes, one-line errors, help that appears at once."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nibabel.testing import data_path

from medddpm.cli import main
from tests.conftest import write_nifti

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def test_help_is_fast_and_lists_commands():
    # torch and MONAI are imported inside the commands only
    code = "import sys, medddpm.cli; assert 'torch' not in sys.modules and 'monai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run(
        [sys.executable, "-m", "medddpm", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("train", "info"):
        assert command in out.stdout


def test_info_table(capsys):
    code, out, err = run_cli(["info", str(Path(data_path) / "anatomical.nii")], capsys)
    assert code == 0
    assert "33x41x25" in out and "LAS" in out and ">i2" in out


def test_info_without_a_path_lists_every_preset_and_what_it_fits(capsys):
    from medddpm.config import PRESET_DIR

    code, out, _ = run_cli(["info"], capsys)
    assert code == 0
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 4}
    assert set(PRESET_DIR.glob("*.yaml")) and {p.stem for p in PRESET_DIR.glob("*.yaml")} <= set(rows)
    assert "one 80 GB GPU" in rows["ct-256-wavelet"] and "one 24 GB GPU" in rows["brain-mri-1mm"]
    assert "a CPU" in rows["tiny"]


def test_info_folder_flags_bad_files(tmp_path: Path, capsys):
    write_nifti(tmp_path / "good.nii.gz", np.random.rand(6, 6, 6).astype(np.float32))
    (tmp_path / "bad.nii.gz").write_text("text")
    code, out, err = run_cli(["info", str(tmp_path)], capsys)
    assert code == 2 and "good.nii.gz" in out and "bad.nii.gz" in out and "1 of 2" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{missing}", "--output", "{tmp}/run"], "no such folder"),
        (["train", "{tmp}", "--output", "{tmp}/run", "--config", "nope"], "no such config file"),
        (["train", "{tmp}", "--output", "{tmp}/run", "--set", "train.lr=fast"], "train.lr"),
        (["train", "{tmp}", "--output", "{tmp}/run", "--precision", "fp8"], "train.precision"),
        (["info", "{missing}"], "no such folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, args, message):
    args = [a.format(tmp=tmp_path, missing=tmp_path / "missing") for a in args]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_plan_and_writes_nothing(scan_dir: Path, tmp_path: Path, capsys):
    code, out, err = run_cli(
        ["train", str(scan_dir), "--output", str(tmp_path / "run"), "--config", "tiny", "--dry-run"], capsys
    )
    assert code == 0
    assert "4 usable" in err and "parameters" in err and "estimated peak" in err and "image_size" in err
    assert not (tmp_path / "run").exists()


def test_dry_run_shows_the_conditioning_and_the_parameters_it_adds(scan_dir: Path, tmp_path: Path, capsys):
    table = tmp_path / "conditions.csv"
    table.write_text("file,sex,age\nsubject_0,F,61\nsubject_1,M,70\nsubject_2,F,48\nsubject_3,F,55\n")
    args = ["train", str(scan_dir), "--output", str(tmp_path / "run"), "--config", "tiny", "--dry-run"]
    code, out, err = run_cli([*args, "--conditions", str(table)], capsys)
    assert code == 0, err
    text = " ".join(err.split())
    assert "sex: categorical, 2 categories: F (3), M (1)" in text
    assert "age: continuous, mean 58.5" in text and "range [48, 70]" in text
    # by hand: width W = 4 x 8 (MONAI's time embedding of tiny's first level); sex: an embedding of
    # 2 + 1 rows; age: Linear(1, W), Linear(W, W) and an "unknown" vector
    w = 32
    added = 3 * w + (2 * w) + (w * w + w) + w
    assert f"embeddings of width {w}" in text and f"{added:,} parameters added" in text
    assert not (tmp_path / "run").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("file,sex\nsubject_0,F\n")
    code, out, err = run_cli([*args, "--conditions", str(bad)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no row for scan" in err, err
    assert not (tmp_path / "run").exists()


def test_train_autoencoder_dry_run_prints_its_estimate_and_writes_nothing(
    scan_dir: Path, tmp_path: Path, capsys
):
    """The autoencoder's and discriminator's parameter counts (the real networks'), the patch the
    estimate is for (autoencoder.patch_size cut to the volume) and the estimated peak."""
    from medddpm.config import build_config
    from medddpm.models.autoencoder import build_autoencoder, build_discriminator

    args = ["--set", "autoencoder.channels=[8,16]", "--set", "autoencoder.norm_num_groups=4"]
    args += ["--set", "autoencoder.patch_size=64", "--image-size", "32", "--batch-size", "3"]
    out = tmp_path / "ae"
    code, _, err = run_cli(
        ["train-autoencoder", str(scan_dir), "--output", str(out), *args, "--dry-run"], capsys
    )
    err = " ".join(err.split())
    assert code == 0, err
    ac = build_config(None, ["autoencoder.channels=[8,16]", "autoencoder.norm_num_groups=4"]).autoencoder
    n_ae = sum(p.numel() for p in build_autoencoder(ac).parameters())
    n_d = sum(p.numel() for p in build_discriminator(ac).parameters())
    assert f"{n_ae:,} parameters" in err and f"PatchDiscriminator: {n_d:,} parameters" in err
    assert "4 usable" in err and "batch 3 of 32x32x32 patches" in err and "estimated peak" in err
    assert not out.exists()
    # patches the discriminator cannot take: the training's own one-line refusal, exit 2
    args = ["train-autoencoder", str(scan_dir), "--output", str(out), "--image-size", "16", "--dry-run"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "too small for a discriminator" in err, err
    assert not out.exists()


def test_train_then_resume_through_cli(scan_dir: Path, tmp_path: Path, capsys):
    run = str(tmp_path / "run")
    assert (
        run_cli(["train", str(scan_dir), "--output", run, "--config", "tiny", "--max-steps", "2"], capsys)[0]
        == 0
    )
    code, _, err = run_cli(["train", str(scan_dir), "--output", run, "--config", "tiny"], capsys)
    assert code == 2 and "--resume" in err
    code, _, err = run_cli(["train", str(scan_dir), "--output", run, "--resume", "--max-steps", "3"], capsys)
    assert code == 0 and "Resuming" in err and "step 3" in err


@pytest.mark.parametrize("command", ["train", "sample", "evaluate"])
def test_threads_below_one_is_a_one_line_error(command: str, tmp_path: Path, capsys):
    args = {
        "train": ["train", str(tmp_path), "-o", str(tmp_path / "run")],
        "sample": ["sample", str(tmp_path), "-o", str(tmp_path / "out"), "-n", "1"],
        "evaluate": ["evaluate", str(tmp_path), str(tmp_path), "-o", str(tmp_path / "report")],
    }[command]
    code, _, err = run_cli([*args, "--threads", "0"], capsys)
    assert code == 2
    assert err.strip().splitlines() == ["error: --threads must be at least 1; got 0"]


def test_threads_sets_torch_threads_for_the_block_only():
    import torch

    from medddpm.cli.options import cpu_threads

    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before


def test_version_is_the_packages(capsys):
    """``medddpm --version`` prints the version pyproject.toml declares, and imports no torch."""
    import re

    declared = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out == f"medddpm {declared}\n"
    check = "import sys; from medddpm.cli import main\ntry: main(['--version'])\nexcept SystemExit as e: "
    check += "assert not e.code and 'torch' not in sys.modules, e.code"
    subprocess.run([sys.executable, "-c", check], check=True, cwd=REPO)


def test_an_unexpected_error_is_one_line_exit_1_unless_debug(
    scan_dir: Path, tmp_path: Path, capsys, monkeypatch
):
    """A failure that is not the user's (here a GPU fault injected into the training step) exits 1
    with one line naming it and how to see more; --debug shows the traceback instead."""
    import medddpm.training.loop as loop

    def faulty_step(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(loop, "train_step", faulty_step)
    args = ["train", str(scan_dir), "--output", str(tmp_path / "run"), "--config", "tiny"]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    said = (
        "unexpected error: RuntimeError: CUDA error: an illegal memory access was encountered "
        "(rerun with --debug for the traceback)"
    )
    assert "Traceback" not in err and " ".join(err.split()).endswith(said), err  # rich wraps long lines
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main(["--debug", *args, "--overwrite"])


@pytest.mark.parametrize(
    ("args", "message"), [(["train", "--bogus"], "--bogus"), (["frobnicate"], "frobnicate")]
)
def test_usage_errors_exit_2(args: list[str], message: str, capsys):
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err and "unexpected error" not in err, err
