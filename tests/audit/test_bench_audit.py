"""benchmarks/bench_audit.py runs end to end at its smallest settings (correctness only, no timing)."""

from __future__ import annotations

from tests.test_benchmarks import load


def test_bench_audit_smallest(capsys):
    bench = load("bench_audit")
    out = bench.main(["--n", "6", "--heldout", "6", "--size", "16", "--copies", "3", "--features", "none"])
    r = out["result"]
    assert r["n_training"] == 6 and r["n_synthetic"] == 6 and r["n_heldout"] == 6
    flagged = {p["file"] for p in r["pairs"]["synthetic"] if p["flagged"]}
    assert {f"copy{i:04d}.nii.gz" for i in range(3)} <= flagged  # the planted copies are found
    assert set(out["seconds"]) >= {"loading", "correlation", "ssim", "report", "total"}
    assert "target (1000 x 1000 at 64³)" in capsys.readouterr().out
