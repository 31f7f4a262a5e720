"""metrics.csv across resumes, and nothing written by processes other than 0."""

from __future__ import annotations

import csv
from pathlib import Path

from medddpm.config import build_config
from medddpm.training.monitor import METRICS_FIELDS, MetricsLog, RunRecords, StepLog


def entry(step: int) -> StepLog:
    return StepLog(step, 10, 0.5 / step, 1e-4, 1.0, 0, 0.1 * step)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_resume_keeps_rows_up_to_the_checkpoint_and_drops_a_cut_short_one(tmp_path: Path):
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path, resume_step=None)
    for step in (1, 2, 3):
        log.write(entry(step))
    with path.open("a") as f:
        f.write("4,0.1")  # a crash in the middle of a row
    MetricsLog(path, resume_step=2).write(entry(3))
    assert [r["step"] for r in rows(path)] == ["1", "2", "3"]
    assert list(rows(path)[0]) == METRICS_FIELDS
    assert rows(path)[2] == {
        "step": "3",
        "loss": "0.166667",
        "lr": "0.0001",
        "grad_norm": "1",
        "skipped_nonfinite": "0",
        "seconds": "0.30",
    }


def test_a_fresh_run_starts_metrics_again(tmp_path: Path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n7,0.1\n")
    MetricsLog(path, resume_step=None)
    assert path.read_text().splitlines() == [",".join(METRICS_FIELDS)]


def test_records_of_other_processes_write_nothing(tmp_path: Path):
    tc = build_config("tiny").train
    records = RunRecords(tmp_path, tc, resume_step=None, enabled=False)
    records.write(entry(1))
    records.close()
    assert list(tmp_path.iterdir()) == []
