"""Conditional runs end to end through the CLI: train with --conditions, sample with conditions and
guidance, and every bad input refused with one line, exit code 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medddpm.cli import main
from tests.conftest import blob_volume, write_nifti

TABLE = "file,group,size\ns0.nii.gz,a,1\ns1.nii.gz,b,2\ns2.nii.gz,a,3\ns3.nii.gz,b,4\n"


def _cli(*args: str) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cond_run")
    rng = np.random.default_rng(3)
    for i in range(4):
        write_nifti(root / "scans" / f"s{i}.nii.gz", blob_volume(rng))
    (root / "table.csv").write_text(TABLE)
    assert (
        _cli(
            "train",
            root / "scans",
            "-o",
            root / "run",
            "--config",
            "tiny",
            "--conditions",
            root / "table.csv",
        )
        == 0
    )
    return root


def test_training_records_conditions_in_dataset_json_and_checkpoint(cond_run: Path):
    dataset = json.loads((cond_run / "run" / "dataset.json").read_text())
    assert [f["conditions"] for f in dataset["files"]] == [
        {"group": g, "size": float(s)} for g, s in zip("abab", range(1, 5), strict=True)
    ]
    names = [v["name"] for v in dataset["conditions"]["variables"]]
    assert names == ["group", "size"]
    meta = json.loads(next((cond_run / "run" / "checkpoints").glob("step-*/meta.json")).read_text())
    assert meta["conditioning"] == dataset["conditions"]["variables"]
    assert meta["condition_rows"][1] == {"group": "b", "size": 2.0}


def test_sample_with_conditions_writes_manifest_and_sidecars(cond_run: Path):
    out = cond_run / "out-fixed"
    assert _cli("sample", cond_run / "run", "-o", out, "-n", 3, "--condition", "group=b",
                "--condition", "size=2.5", "--guidance", 2) == 0  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["guidance"] == 2.0
    assert manifest["recipe"]["conditions"] == {"condition": {"group": "b", "size": "2.5"}}
    for i, record in enumerate(manifest["samples"]):
        assert record["conditions"] == {"group": "b", "size": 2.5}
        sidecar = json.loads((out / f"sample_{i:04d}.json").read_text())
        assert sidecar == {k: v for k, v in record.items() if k != "seconds"}
    # The same command again: the recipe matches, nothing is redrawn.
    assert _cli("sample", cond_run / "run", "-o", out, "-n", 3, "--condition", "group=b",
                "--condition", "size=2.5", "--guidance", 2) == 0  # fmt: skip
    # Other conditions are another recipe: refused.
    assert _cli("sample", cond_run / "run", "-o", out, "-n", 3, "--condition", "group=a") == 2


def test_conditions_differ_per_sample_from_csv_and_match_training(cond_run: Path):
    rows = cond_run / "rows.csv"
    rows.write_text("group,size\na,1\nb,\n")
    out = cond_run / "out-csv"
    assert _cli("sample", cond_run / "run", "-o", out, "-n", 2, "--conditions-csv", rows) == 0
    got = [r["conditions"] for r in json.loads((out / "manifest.json").read_text())["samples"]]
    assert got == [{"group": "a", "size": 1.0}, {"group": "b", "size": None}]
    out = cond_run / "out-match"
    assert _cli("sample", cond_run / "run", "-o", out, "-n", 6, "--match-training") == 0
    training = [{"group": g, "size": float(s)} for g, s in zip("abab", range(1, 5), strict=True)]
    got = [r["conditions"] for r in json.loads((out / "manifest.json").read_text())["samples"]]
    assert all(c in training for c in got) and len({json.dumps(c) for c in got}) > 1


def test_unconditional_samples_from_a_conditional_model(cond_run: Path):
    out = cond_run / "out-none"
    assert _cli("sample", cond_run / "run", "-o", out, "-n", 2) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["conditions"] for r in manifest["samples"]] == [{"group": None, "size": None}] * 2
    assert manifest["recipe"]["conditions"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--condition", "group=c"], "unknown category 'c' for 'group'"),
        (["--condition", "size=9"], "outside the training range [1, 4]; pass --extrapolate"),
        (["--condition", "weight=3"], "unknown condition variable 'weight'"),
        (["--condition", "group"], "--condition expects name=value"),
        (["--condition", "group=a", "--match-training"], "use one of --condition"),
        (["--guidance", "-1"], "--guidance must be at least 0"),
        (["--conditions-csv", "ROWS"], "has 1 rows but --num is 2"),
    ],
)
def test_bad_sampling_conditions_exit_2_with_one_line_and_write_nothing(
    cond_run: Path, args: list[str], message: str, capsys
):
    (cond_run / "one.csv").write_text("group\na\n")
    args = [str(cond_run / "one.csv") if a == "ROWS" else a for a in args]
    out = cond_run / "out-bad"
    assert _cli("sample", cond_run / "run", "-o", out, "-n", 2, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_conditions_on_an_unconditional_checkpoint_are_refused(tiny_run: Path, tmp_path: Path, capsys):
    for args in (["--condition", "sex=F"], ["--guidance", "2"], ["--match-training"]):
        assert _cli("sample", tiny_run, "-o", tmp_path / "out", "-n", 1, *args) == 2
        assert "trained without conditions" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_training_tables_and_resume_mismatch_exit_2(cond_run: Path, tmp_path: Path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(TABLE + "s7.nii.gz,a,1\n")
    run = tmp_path / "run"
    assert _cli("train", cond_run / "scans", "-o", run, "--config", "tiny", "--conditions", bad) == 2
    assert "row 6: 's7.nii.gz' matches no scan" in capsys.readouterr().err
    assert not run.exists()
    other = tmp_path / "other.csv"
    other.write_text(TABLE.replace("b,4", "c,4"))
    args = [
        "train",
        cond_run / "scans",
        "-o",
        cond_run / "run",
        "--config",
        "tiny",
        "--resume",
        "--max-steps",
        6,
    ]
    assert _cli(*args, "--conditions", other) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert _cli(*args) == 2  # the checkpoint is conditional, this run is not
