"""The metric table: one entry per metric, read by every output; adding a metric is one entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medddpm.evaluation import specs
from medddpm.evaluation.specs import METRICS, MetricInputs, MetricSpec, table_rows
from tests.evaluation.test_measure import blobs, noisy, run_cli, write_set


def toy_spec(**changes) -> MetricSpec:
    """A metric that is only its function and its entry: real volumes / 48, shown with an interval."""
    fields = dict(
        key="toy_score",
        label="Toy score",
        direction="↑ higher is better",
        meaning="Real volumes over 48, to show that one table entry is enough.",
        number_format=".3f",
        value=lambda inputs: len(inputs.features["real"]) / 48,
        interval=lambda inputs: [0.1, 0.15],
        caveat=lambda m: f"Toy caveat for {m['n_real']} real volumes.",
        row=8,
        note=lambda m: f"Toy note: the toy score is {m['toy_score']:.3f} whatever the volumes look like.",
        summary=lambda m: f"The toy score is {m['toy_score']:.3f}.",
    )
    return MetricSpec(**(fields | changes))


def test_a_registered_metric_reaches_every_output(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(METRICS, "toy_score", toy_spec())
    monkeypatch.setenv("COLUMNS", "160")  # the console table on one line per metric
    real = write_set(tmp_path / "real", blobs(6, seed=0))
    synth = write_set(tmp_path / "synth", noisy(blobs(6, seed=1), 15.0, seed=2))
    report = tmp_path / "report"
    code, out, err = run_cli(["evaluate", real, synth, "--output", report, "--max-pairs", "3"])
    assert code == 0, err

    metrics = json.loads((report / "metrics.json").read_text())
    keys = list(metrics)
    assert metrics["toy_score"] == 0.125 and metrics["toy_score_ci95"] == [0.1, 0.15]
    # after the other metrics' values, before the set sizes; its interval after theirs
    assert keys.index("coverage") + 1 == keys.index("toy_score") == keys.index("n_real") - 1
    assert keys.index("ms_ssim_real_ci95") + 1 == keys.index("toy_score_ci95")
    note = "Toy note: the toy score is 0.125 whatever the volumes look like."
    assert note in metrics["caveats"]
    assert metrics["caveats"].index(note) > metrics["caveats"].index(
        next(c for c in metrics["caveats"] if c.startswith("MS-SSIM uses"))
    )  # row 8: after the eight metrics' notes

    assert "Toy score" in out and "0.125 (95% CI 0.100–0.150)" in out
    html = (report / "report.html").read_text()
    assert (
        "<tr><td>Toy score</td><td class='value'>0.125 (95% CI 0.100–0.150)</td>"
        "<td class='direction'>↑ higher is better</td>"
        "<td class='meaning'>Real volumes over 48, to show that one table entry is enough."
        "<span class='caveat'>Toy caveat for 6 real volumes.</span></td></tr>"
    ) in html
    md = (report / "report.md").read_text()
    assert (
        "| Toy score | 0.125 (95% CI 0.100–0.150) | ↑ higher is better | Real volumes over 48, to show "
        "that one table entry is enough. *Toy caveat for 6 real volumes.* |"
    ) in md
    for text in (html, md):
        assert note in text and "The toy score is 0.125." in text


def test_each_metric_key_has_one_spec():
    assert all(key == spec.key for key, spec in METRICS.items())
    with pytest.raises(ValueError, match="given twice: fid"):
        specs._table(METRICS["fid"], METRICS["mmd"], toy_spec(key="fid"))


def test_rows_follow_row_not_the_table_order():
    assert [s.key for s in table_rows()] == [
        "fid", "mmd", "precision", "recall", "density", "coverage", "ms_ssim_synthetic", "ms_ssim_real",
    ]  # fmt: skip
    assert list(METRICS)[:4] == ["fid", "ms_ssim_synthetic", "ms_ssim_real", "mmd"]  # metrics.json's order


def test_format_and_caveat():
    spec = toy_spec(number_format=".1%", caveat="Always the same.")
    assert spec.format({"toy_score": 0.5, "toy_score_ci95": [0.25, 0.75]}) == "50.0% (95% CI 25.0%–75.0%)"
    assert spec.format({"toy_score": 0.5, "toy_score_ci95": [None, None]}) == "50.0%"
    assert spec.format({"toy_score": None}) == "unavailable"
    assert toy_spec(interval=None).format({"toy_score": 0.5, "toy_score_ci95": [0.0, 1.0]}) == "0.500"
    assert spec.caveat_for({}) == "Always the same."
    assert toy_spec().caveat_for({"n_real": 4}) == "Toy caveat for 4 real volumes."


def test_values_come_from_the_shared_computations():
    inputs = MetricInputs(
        volumes={},
        features={"real": [[0.0]] * 5},
        feature_metrics={"fid": 1.5, "mmd": 0.25, "precision": None},
        ms_ssim={"real": {"mean": 0.4, "ci95_low": 0.3, "ci95_high": 0.5}, "synthetic": {"mean": 0.6}},
    )
    assert METRICS["fid"].value(inputs) == 1.5 and METRICS["mmd"].value(inputs) == 0.25
    assert METRICS["precision"].value(inputs) is None
    assert METRICS["ms_ssim_real"].value(inputs) == 0.4 and METRICS["ms_ssim_synthetic"].value(inputs) == 0.6
    assert METRICS["ms_ssim_real"].interval(inputs) == [0.3, 0.5]
