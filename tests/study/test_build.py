"""``medddpm study build`` and ``analyze`` through the real CLI: the folder, its blinding, the analysis."""

from __future__ import annotations

import csv
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medddpm.evaluation.measure import default_preprocessing, load_scan
from medddpm.study import statistics as st
from medddpm.study.pages import grey, slice_stacks
from tests.evaluation.test_measure import run_cli
from tests.study.conftest import N, build


def page_data(study: Path, reader: str) -> dict:
    text = (study / "readers" / reader / "index.html").read_text()
    return json.loads(re.search(r'id="page-data">(.*?)</script>', text, re.S).group(1).replace("<\\/", "</"))


def png_chunks(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, i = [], 8
    while i < len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        chunks.append(data[i + 4 : i + 8].decode("ascii"))
        i += 12 + length
    return chunks


def test_study_folder_holds_the_key_outside_the_readers_folders(binary_study: Path):
    key = json.loads((binary_study / "key.json").read_text())
    assert sorted(p.name for p in binary_study.iterdir()) == ["key.json", "readers", "study.json"]
    assert sorted(p.name for p in (binary_study / "readers").iterdir()) == [
        "reader-01",
        "reader-02",
        "reader-03",
    ]
    assert len(key["cases"]) == 2 * N
    assert sorted(v["truth"] for v in key["volumes"].values()) == ["real"] * N + ["synthetic"] * N
    for reader in key["readers"]:
        folder = binary_study / "readers" / reader
        names = {p.name for p in folder.rglob("*")}
        assert "key.json" not in names
        text = (folder / "index.html").read_text()
        for secret in (*(v["file"] for v in key["volumes"].values()), "subject_", "sample_", "key.json"):
            assert secret not in text
        for token in (v["token"] for v in key["readers"].values()):
            assert token not in text
        data = page_data(binary_study, reader)
        assert {tuple(c) for c in map(dict.keys, data["cases"])} == {("id", "volumes")}
        assert sorted(c["id"] for c in data["cases"]) == sorted(key["cases"])


def test_nothing_in_a_readers_folder_separates_real_from_synthetic(binary_study: Path):
    """File sizes and modification times are identical, PNGs carry no metadata chunk, and neither the
    ids nor any reader's order rank real cases apart from synthetic ones beyond chance."""
    key = json.loads((binary_study / "key.json").read_text())
    truth = {vid: v["truth"] == "synthetic" for vid, v in key["volumes"].items()}
    files = [p for p in (binary_study / "readers").rglob("*.png")]
    assert len(files) == 3 * 3 * 2 * N
    by_view: dict[str, set[int]] = {}
    for p in files:
        by_view.setdefault(p.stem.split("-")[1], set()).add(p.stat().st_size)
        assert png_chunks(p) == ["IHDR", "IDAT", "IEND"]
    assert all(len(sizes) == 1 for sizes in by_view.values()), by_view
    assert len({p.stat().st_mtime for p in (binary_study / "readers").rglob("*")}) == 1
    ids = sorted(truth)
    auc_ids = st.roc_auc([truth[i] for i in ids], np.arange(len(ids)))
    assert 0.15 < auc_ids < 0.85
    orders = []
    for reader in key["readers"]:
        cases = [c["id"] for c in page_data(binary_study, reader)["cases"]]
        orders.append(cases)
        auc = st.roc_auc([truth[c] for c in cases], np.arange(len(cases)))
        assert 0.15 < auc < 0.85, (reader, auc)
    assert orders[0] != orders[1] != orders[2]


def test_real_and_synthetic_volumes_reach_the_page_through_one_pipeline(binary_study: Path):
    """A stack decoded from its PNG equals the source file through evaluate's preprocessing and the fixed
    grey scale, for real and synthetic volumes alike."""
    key = json.loads((binary_study / "key.json").read_text())
    prep = None
    for truth in ("real", "synthetic"):
        vid, v = next((i, v) for i, v in key["volumes"].items() if v["truth"] == truth)
        prep = prep or default_preprocessing(Path(v["file"]))
        volume = load_scan(Path(v["file"]), prep)[0][0].numpy()
        expected = slice_stacks(grey(volume))["coronal"]
        shown = np.asarray(Image.open(binary_study / "readers" / "reader-02" / "img" / f"{vid}-coronal.png"))
        np.testing.assert_array_equal(shown, expected.reshape(-1, expected.shape[2]))


def simulated_answers(key: dict, accuracy: dict[str, float], seed: int = 0) -> dict[str, list[dict]]:
    rng = np.random.default_rng(seed)
    out = {}
    for reader, p in accuracy.items():
        answers = []
        for case_id, case in key["cases"].items():
            right = rng.random() < p
            other = {"real": "synthetic", "synthetic": "real", "A": "B", "B": "A"}[case["truth"]]
            answer = case["truth"] if right else other
            confidence = int(rng.integers(3, 6) if right else rng.integers(1, 4))
            answers.append(
                {"case": case_id, "answer": answer, "confidence": str(confidence), "comment": "", "time": "t"}
            )
        out[reader] = answers
    return out


def write_exports(key: dict, answers: dict[str, list[dict]], folder: Path) -> list[Path]:
    paths = []
    for reader, a in answers.items():
        path = folder / f"answers-{reader}.json"
        path.write_text(
            json.dumps({"study": key["study"], "reader": reader, "task": key["task"], "answers": a})
        )
        paths.append(path)
    return paths


def test_analyze_reads_exports_and_reports_every_statistic(binary_study: Path, tmp_path: Path):
    key = json.loads((binary_study / "key.json").read_text())
    answers = simulated_answers(key, {"reader-01": 1.0, "reader-02": 0.5, "reader-03": 0.8})
    exports = write_exports(key, answers, tmp_path)
    metrics = tmp_path / "metrics.csv"
    synthetic = [v["file"] for v in key["volumes"].values() if v["truth"] == "synthetic"]
    metrics.write_text(
        "file,fake_score\n" + "".join(f"{Path(f).name},{i}\n" for i, f in enumerate(synthetic))
    )
    out = tmp_path / "report"
    code, stdout, err = run_cli(
        ["study", "analyze", binary_study, *exports, "--output", out, "--metrics", metrics]
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "analysis.json",
        "answers.csv",
        "reader_accuracy.png",
        "report.html",
        "report.md",
    ]
    r = json.loads((out / "analysis.json").read_text())
    for reader, given in answers.items():
        k = sum(a["answer"] == key["cases"][a["case"]]["truth"] for a in given)
        assert r["per_reader"][reader]["k"] == k
        assert r["per_reader"][reader]["p_value"] == pytest.approx(st.accuracy(k, 2 * N)["p_value"])
    assert r["per_reader"]["reader-01"]["accuracy"] == 1.0
    assert r["per_reader"]["reader-01"]["sensitivity"] == r["per_reader"]["reader-01"]["specificity"] == 1.0
    assert r["per_reader"]["reader-01"]["auc"] == 1.0
    assert r["agreement"]["statistic"] == "Fleiss' κ" and r["agreement"]["cases"] == 2 * N
    assert r["pooled"]["n"] == 3 * 2 * N
    assert set(r["metrics"]["spearman"]) == {"nearest_real_correlation", "fake_score"}
    assert r["metrics"]["spearman"]["fake_score"]["n"] == N
    rows = list(csv.DictReader((out / "answers.csv").read_text().splitlines()))
    assert len(rows) == 3 * 2 * N and {row["truth"] for row in rows} == {"real", "synthetic"}
    html = (out / "report.html").read_text()
    assert "Fleiss" in html and "decisions needed" in html and "Pooled accuracy" in stdout


def test_analyze_refuses_answers_of_another_study(binary_study: Path, tmp_path: Path):
    bad = tmp_path / "answers.json"
    bad.write_text(json.dumps({"study": "other", "reader": "reader-01", "answers": []}))
    code, _, err = run_cli(["study", "analyze", binary_study, bad, "--output", tmp_path / "report"])
    assert code == 2 and "another study" in err and str(bad) in " ".join(err.split())
    assert not (tmp_path / "report").exists()


def test_build_refuses_bad_input_and_writes_nothing(sets, tmp_path: Path):
    real, synthetic = sets
    out = tmp_path / "study"
    code, _, err = run_cli(
        ["study", "build", "--real", real, "--synthetic", synthetic, "--output", out, "--n", N + 1]
    )
    assert code == 2 and "--n asks for" in err and not out.exists()
    code, _, err = run_cli(
        ["study", "build", "--real", real, "--synthetic", synthetic, "--output", out, "--task", "ranking"]
    )
    assert code == 2 and "unknown task" in err and not out.exists()


def test_a_study_holding_answers_is_never_rebuilt(binary_study: Path, sets, tmp_path: Path):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(binary_study, copy)
    (copy / "responses").mkdir()
    (copy / "responses" / "reader-01.jsonl").write_text('{"answer": {"case": "x"}}\n')
    real, synthetic = sets
    code, _, err = run_cli(
        ["study", "build", "--real", real, "--synthetic", synthetic, "--output", copy, "--overwrite"]
    )
    assert code == 2 and "responses" in err
    assert (copy / "responses" / "reader-01.jsonl").is_file()


@pytest.mark.parametrize("task", ["2afc", "rating"])
def test_two_alternative_and_rating_studies(task: str, sets, tmp_path: Path):
    study = build(sets, tmp_path / "study", "--task", task, "--readers", "2")
    key = json.loads((study / "key.json").read_text())
    data = page_data(study, "reader-01")
    rng = np.random.default_rng(3)
    if task == "2afc":
        assert len(key["cases"]) == N and all(len(c["volumes"]) == 2 for c in data["cases"])
        for case in key["cases"].values():
            truths = [key["volumes"][v]["truth"] for v in case["volumes"]]
            assert truths[0 if case["truth"] == "A" else 1] == "real" and sorted(truths) == [
                "real",
                "synthetic",
            ]
        answers = simulated_answers(key, {"reader-01": 1.0, "reader-02": 0.5})
    else:
        answers = {}
        for reader in key["readers"]:
            answers[reader] = [
                {
                    "case": c,
                    **{
                        s: str(int(rng.integers(3, 5) if case["truth"] == "real" else rng.integers(1, 3)))
                        for s in ("realism", "consistency", "anatomy")
                    },
                }
                for c, case in key["cases"].items()
            ]
    out = tmp_path / "report"
    code, _, err = run_cli(
        ["study", "analyze", study, *write_exports(key, answers, tmp_path), "--output", out]
    )
    assert code == 0, err
    r = json.loads((out / "analysis.json").read_text())
    if task == "2afc":
        assert r["per_reader"]["reader-01"]["accuracy"] == 1.0
        assert r["agreement"]["statistic"] == "Cohen's κ"
    else:
        realism = r["scales"]["realism"]
        assert realism["mean"]["real"] > 2.5 > realism["mean"]["synthetic"]
        assert realism["mann_whitney"]["p_value"] < 0.01
        assert sum(realism["counts"]["real"]) == 2 * N
