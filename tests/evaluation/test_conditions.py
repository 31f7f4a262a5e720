"""Conditions in an evaluation: reading each set's conditions, metrics per stratum, the condition check.

The check is built on hand-made features (no network, no training): a synthetic set whose features
follow its requests must read "obeyed", one whose features ignore them "ignored", scored at chance.
Then ``medddpm evaluate --conditions`` end to end on tiny folders, and its bad inputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from medddpm.data.conditions import ConditionSpec, TrainingConditions, Variable
from medddpm.errors import InputError
from medddpm.evaluation.conditions import (
    check_variable,
    condition_metrics,
    ovr_auc,
    pearson_r,
    read_synthetic_conditions,
    stratum_metrics,
    typed_rows,
)
from medddpm.evaluation.measure import feature_metrics
from medddpm.evaluation.metrics import fid_from_features
from tests.conftest import write_nifti
from tests.evaluation.test_measure import run_cli

GROUP = Variable("group", "categorical", categories=("A", "B"))
AGE = Variable("age", "continuous", mean=50.0, std=17.0, minimum=20.0, maximum=80.0)
F = 12  # feature width: small, but wider than the signal (feature 0)


def group_features(groups: list[str], rng: np.random.Generator) -> np.ndarray:
    """Features [N, F] whose feature 0 is +2 for group A and -2 for B, plus unit noise everywhere."""
    x = rng.normal(size=(len(groups), F))
    x[:, 0] += np.where(np.asarray(groups) == "A", 2.0, -2.0)
    return x


def age_features(ages: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Features [N, F] whose feature 0 is age / 5 plus unit noise (r about 0.96 with age)."""
    x = rng.normal(size=(len(ages), F))
    x[:, 0] += ages / 5.0
    return x


# --------------------------------------------------------------------------------------------------
# The condition check on hand-built features
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def groups():
    rng = np.random.default_rng(0)
    real = ["A", "B"] * 15
    requested = ["A", "B"] * 20
    obeyed = group_features(requested, rng)  # the features show the requested group
    ignored = group_features(list(rng.choice(["A", "B"], size=40)), rng)  # a group drawn regardless
    return group_features(real, rng), real, requested, obeyed, ignored


def test_a_categorical_condition_obeyed_reads_obeyed_and_one_ignored_reads_ignored(groups):
    real_x, real, requested, obeyed, ignored = groups
    good = check_variable(GROUP, real_x, real, obeyed, requested, seed=0)
    bad = check_variable(GROUP, real_x, real, ignored, requested, seed=0)
    # the ceiling: the real set's cross-validated accuracy, far above chance (feature 0 separates by 4 sd)
    assert good["real_cv"]["accuracy"] >= 0.9 and good["real_cv"]["chance"] == 0.5
    assert good["real_cv"]["folds"] == 5 and good == {**good, "n_real": 30, "n_synthetic": 40}
    assert good["synthetic"]["accuracy"] >= 0.9 and good["reading"] == "obeyed"
    assert abs(bad["synthetic"]["accuracy"] - 0.5) <= 0.15 and bad["reading"] == "ignored"
    assert bad["real_cv"] == good["real_cv"]  # the same model on the same real set
    assert "obeys this condition" in good["sentence"] and "ignore this condition" in bad["sentence"]
    assert "chance 50%" in bad["sentence"]


def test_a_set_wide_shift_of_the_synthetic_features_reads_by_ranking_not_accuracy(groups):
    """Samples that obey the condition but lie apart from the real set as a whole (a noise floor, blur):
    the classifier puts them all in one group, so accuracy is at chance; the AUC still reads obeyed.
    An ignored condition with the same shift stays ignored: the shift cannot make a condition look obeyed.
    """
    real_x, real, requested, obeyed, ignored = groups
    shift = np.full(F, 3.0)
    shift[0] = -8.0  # far past group B along the direction that tells the groups apart
    good = check_variable(GROUP, real_x, real, obeyed + shift, requested, seed=0)
    bad = check_variable(GROUP, real_x, real, ignored + shift, requested, seed=0)
    assert good["synthetic"]["accuracy"] == 0.5 and good["synthetic"]["predicted_share"] == 1.0
    assert good["synthetic"]["auc"] >= 0.95 and good["reading"] == "obeyed"
    assert "puts 100% of the synthetic volumes in one category" in good["sentence"]
    assert "AUC" in good["sentence"] and "obeys this condition" in good["sentence"]
    assert abs(bad["synthetic"]["auc"] - 0.5) <= 0.15 and bad["reading"] == "ignored"


def test_one_vs_rest_auc_is_sklearns_and_one_requested_category_falls_back_to_accuracy(groups):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    labels = np.array(["a", "b", "c"] * 10)
    proba = rng.dirichlet(np.ones(3), size=30)
    classes = np.array(["a", "b", "c"])
    assert ovr_auc(labels, proba, classes) == pytest.approx(
        roc_auc_score(labels, proba, multi_class="ovr", average="macro", labels=classes)
    )
    assert ovr_auc(np.array(["a"] * 5), proba[:5], classes) is None
    real_x, real, _, obeyed, _ = groups
    only_a = check_variable(GROUP, real_x, real, obeyed[::2], ["A"] * 20, seed=0)
    # chance is how often a classifier that ignores the request says A: the real set's share of A
    assert only_a["synthetic"]["auc"] is None and only_a["synthetic"]["chance"] == 0.5
    assert only_a["synthetic"]["accuracy"] >= 0.9 and only_a["reading"] == "obeyed"
    only_b = check_variable(GROUP, real_x, real, obeyed[::2], ["B"] * 20, seed=0)  # features of A
    assert only_b["synthetic"]["accuracy"] <= 0.1 and only_b["reading"] == "ignored"


def test_the_synthetic_accuracy_is_the_fitted_models_agreement_with_the_requests(groups):
    """Against a hand computation: the same pipeline fitted on the real set, counted by hand."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    real_x, real, requested, _, ignored = groups
    scaler = StandardScaler().fit(real_x)
    clf = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(real_x), real)
    by_hand = sum(p == r for p, r in zip(clf.predict(scaler.transform(ignored)), requested, strict=True)) / 40
    assert check_variable(GROUP, real_x, real, ignored, requested)["synthetic"]["accuracy"] == by_hand


def test_a_continuous_condition_obeyed_and_ignored():
    rng = np.random.default_rng(1)
    real_ages = rng.uniform(20, 80, 40)
    requested = rng.uniform(20, 80, 60)
    real_x = age_features(real_ages, rng)
    good = check_variable(AGE, real_x, list(real_ages), age_features(requested, rng), list(requested))
    bad = check_variable(
        AGE, real_x, list(real_ages), age_features(rng.uniform(20, 80, 60), rng), list(requested)
    )
    assert good["real_cv"]["r"] >= 0.8 and good["synthetic"]["r"] >= 0.8 and good["reading"] == "obeyed"
    assert abs(bad["synthetic"]["r"]) <= 0.3 and bad["reading"] == "ignored"
    # the error: far below always guessing the real mean when obeyed, not below it when ignored
    assert good["synthetic"]["mae"] < 0.5 * good["synthetic"]["mae_of_real_mean"]
    assert bad["synthetic"]["mae"] > 2 * good["synthetic"]["mae"]


def test_features_that_do_not_show_the_variable_leave_the_check_undetermined():
    rng = np.random.default_rng(2)
    real = ["A", "B"] * 10
    noise = rng.normal(size=(20, F))  # no group signal at all, in either set
    entry = check_variable(GROUP, noise, real, rng.normal(size=(20, F)), real)
    assert entry["reading"] == "undetermined" and "cannot say" in entry["sentence"]


def test_the_check_says_why_it_cannot_run():
    x = np.zeros((4, F))
    one_category = check_variable(GROUP, x, ["A"] * 4, x, ["A", "B", "A", "B"])
    assert one_category["reading"] == "undetermined"
    assert "at least 2 categories" in one_category["unavailable"]
    not_requested = check_variable(GROUP, x, ["A", "B"] * 2, x, [None] * 4)
    assert "no synthetic volume requested" in not_requested["unavailable"]
    assert not_requested["n_synthetic"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pearson_r_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=25)
    y = 0.5 * x + rng.normal(size=25)
    assert pearson_r(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert pearson_r(x, np.full(25, 3.0)) is None


# --------------------------------------------------------------------------------------------------
# Metrics per stratum
# --------------------------------------------------------------------------------------------------


def test_each_category_is_a_stratum_measured_on_its_own_volumes_when_both_sets_have_enough():
    rng = np.random.default_rng(3)
    spec = ConditionSpec((GROUP, AGE))
    real_rows = [{"group": g, "age": 30.0} for g in ["A"] * 7 + ["B"] * 4]
    synth_rows = [{"group": g, "age": 40.0} for g in ["A"] * 6 + ["B"] * 6 + ["C"] * 5]
    features = {"real": rng.normal(size=(11, F)), "synthetic": rng.normal(size=(17, F))}
    strata = stratum_metrics(spec, real_rows, synth_rows, features, lambda r, s: feature_metrics(r, s, 3))
    assert [(s["category"], s["n_real"], s["n_synthetic"]) for s in strata] == [
        ("A", 7, 6),
        ("B", 4, 6),
        ("C", 0, 5),
    ]  # the continuous age is not stratified; C was only requested
    a, b, c = strata
    assert a["skipped"] is None
    assert a["fid"] == pytest.approx(fid_from_features(features["real"][:7], features["synthetic"][:6]))
    assert "fewer than 5" in b["skipped"] and b["fid"] is None and c["fid"] is None


# --------------------------------------------------------------------------------------------------
# Reading the synthetic set's conditions
# --------------------------------------------------------------------------------------------------


def _touch(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return [folder / n for n in names]


def test_sidecars_first_then_the_manifest(tmp_path):
    files = _touch(tmp_path, ["sample_0000.nii.gz", "sample_0001.nii.gz", "case_img.nii"])
    (tmp_path / "sample_0000.json").write_text(json.dumps({"conditions": {"group": "A", "age": 61}}))
    (tmp_path / "case_img.json").write_text(json.dumps({"conditions": {"group": "B", "age": None}}))
    manifest = {"samples": [{"file": "sample_0001.nii.gz", "conditions": {"group": "B", "age": 30}}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    rows, source = read_synthetic_conditions(tmp_path, files)
    assert rows == [{"group": "A", "age": 61}, {"group": "B", "age": 30}, {"group": "B", "age": None}]
    assert source == "JSON sidecars and manifest.json"
    typed = typed_rows(ConditionSpec((GROUP, AGE)), rows, files)
    assert typed[0] == {"group": "A", "age": 61.0} and typed[2]["age"] is None


def test_unconditional_or_unmarked_samples_carry_no_conditions(tmp_path):
    files = _touch(tmp_path, ["sample_0000.nii.gz", "sample_0001.nii.gz"])
    assert read_synthetic_conditions(tmp_path, files) is None
    # what sampling a conditional run without condition flags writes
    for f in ("sample_0000.json", "sample_0001.json"):
        (tmp_path / f).write_text(json.dumps({"conditions": {"group": None}}))
    assert read_synthetic_conditions(tmp_path, files) is None


def test_bad_synthetic_conditions_name_the_file(tmp_path):
    files = _touch(tmp_path, ["sample_0000.nii.gz", "sample_0001.nii.gz"])
    (tmp_path / "sample_0000.json").write_text(json.dumps({"conditions": {"group": "A", "age": "old"}}))
    with pytest.raises(InputError, match="sample_0001.nii.gz.*no conditions"):
        read_synthetic_conditions(tmp_path, files)
    (tmp_path / "sample_0001.json").write_text("{not json")
    with pytest.raises(InputError, match="sample_0001.json.*cannot read"):
        read_synthetic_conditions(tmp_path, files)
    with pytest.raises(InputError, match="sample_0000.json.*'age' is continuous.*'old'"):
        typed_rows(ConditionSpec((GROUP, AGE)), [{"age": "old"}], [tmp_path / "sample_0000.json"])


def test_condition_metrics_holds_every_part_as_plain_types(groups):
    real_x, real, requested, obeyed, _ = groups
    conditions = TrainingConditions(ConditionSpec((GROUP,)), [{"group": g} for g in real], Path("t.csv"))
    out = condition_metrics(
        conditions,
        [{"group": g} for g in requested],
        "JSON sidecars",
        {"real": real_x, "synthetic": obeyed},
        lambda r, s: feature_metrics(r, s, 5),
    )
    json.dumps(out, allow_nan=False)
    assert [s["category"] for s in out["strata"]] == ["A", "B"] and out["strata"][0]["skipped"] is None
    assert [c["reading"] for c in out["check"]] == ["obeyed"]


# --------------------------------------------------------------------------------------------------
# medddpm evaluate --conditions
# --------------------------------------------------------------------------------------------------

SHAPE = (16, 16, 16)


def cube(half: int, rng: np.random.Generator) -> np.ndarray:
    """A bright cube of half-width ``half`` voxels, centred, on a noisy background."""
    v = rng.normal(0, 5, SHAPE).astype(np.float32)
    c = SHAPE[0] // 2
    v[c - half : c + half, c - half : c + half, c - half : c + half] += 100.0
    return v


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """12 real scans (small cubes: group A; large: group B) with their table, and 12 synthetic scans
    whose sidecars request the group their cube shows (obeyed)."""
    root = tmp_path_factory.mktemp("conditions")
    rng = np.random.default_rng(4)
    lines = ["file,group,age"]
    for i in range(12):
        group = "AB"[i % 2]
        write_nifti(root / "real" / f"r{i:02d}.nii.gz", cube(3 if group == "A" else 6, rng))
        lines.append(f"r{i:02d}.nii.gz,{group},{20 + 5 * i}")
    (root / "real.csv").write_text("\n".join(lines) + "\n")
    for i in range(12):
        group = "AB"[(i // 2) % 2]
        write_nifti(root / "synth" / f"sample_{i:04d}.nii.gz", cube(3 if group == "A" else 6, rng))
        record = {"index": i, "conditions": {"group": group, "age": 40.0}, "guidance": 1.0}
        (root / "synth" / f"sample_{i:04d}.json").write_text(json.dumps(record))
    return root


def test_evaluate_with_conditions_reports_strata_and_the_check(sets, tmp_path):
    report = tmp_path / "report"
    code, out, err = run_cli(
        ["evaluate", sets / "real", sets / "synth", "-o", report, "--conditions", sets / "real.csv",
         "--max-pairs", "4"]
    )  # fmt: skip
    assert code == 0, out + err
    m = json.loads((report / "metrics.json").read_text())["conditions"]
    assert m["synthetic_source"] == "JSON sidecars" and m["min_stratum_volumes"] == 5
    assert [(s["category"], s["n_real"], s["n_synthetic"]) for s in m["strata"]] == [("A", 6, 6), ("B", 6, 6)]
    assert all(math.isfinite(s["fid"]) for s in m["strata"])
    group, age = m["check"]
    assert group["variable"] == "group" and group["synthetic"]["accuracy"] >= 0.9
    assert group["real_cv"]["accuracy"] >= 0.9 and group["reading"] == "obeyed"
    assert age["kind"] == "continuous" and age["synthetic"]["r"] is None  # every sample asked for 40
    html, md = (report / "report.html").read_text(), (report / "report.md").read_text()
    for text in (html, md):
        assert "Condition check" in text and "Metrics per stratum" in text and "group = A" in text
        assert "obeys this condition" in text
    assert "obeys this condition" in " ".join(err.split())  # the console, beside the table


def test_sidecars_without_a_table_are_named_in_the_caveats(sets, tmp_path):
    report = tmp_path / "report"
    code, out, err = run_cli(["evaluate", sets / "real", sets / "synth", "-o", report, "--max-pairs", "2"])
    assert code == 0, out + err
    m = json.loads((report / "metrics.json").read_text())
    assert "conditions" not in m and any("--conditions" in c for c in m["caveats"])
    assert "Condition check" not in (report / "report.html").read_text()


def _bad_table(sets: Path, tmp_path: Path) -> Path:
    rows = (sets / "real.csv").read_text().splitlines()
    (tmp_path / "bad.csv").write_text("\n".join([*rows, "ghost.nii.gz,A,30"]) + "\n")
    return tmp_path / "bad.csv"


def _no_sidecars(sets: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "plain"
    for f in sorted((sets / "synth").glob("*.nii.gz")):
        (folder / f.name).parent.mkdir(exist_ok=True)
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("row matching no scan", "bad.csv: row 14: 'ghost.nii.gz' matches no scan"),
        ("no sidecars", "no synthetic scan carries conditions"),
        ("no such table", "cannot read the CSV table"),
    ],
)
def test_bad_condition_inputs_exit_2_with_one_line_and_write_nothing(sets, tmp_path, case, expected):
    table, synth = sets / "real.csv", sets / "synth"
    if case == "row matching no scan":
        table = _bad_table(sets, tmp_path)
    elif case == "no sidecars":
        synth = _no_sidecars(sets, tmp_path)
    else:
        table = tmp_path / "missing.csv"
    report = tmp_path / "report"
    code, out, err = run_cli(["evaluate", sets / "real", synth, "-o", report, "--conditions", table])
    assert code == 2, out + err
    lines = [line for line in (out + err).strip().splitlines() if line.strip()]
    assert len(lines) == 1 and expected in " ".join(lines), lines
    assert not report.exists()
