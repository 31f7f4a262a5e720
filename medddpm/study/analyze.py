"""``study analyze``: STUDY_DIR (+ exported answer files) -> REPORT_DIR.

1. Check the report folder (output_folder.STUDY_REPORT_FOLDER); nothing is written until step 3.
2. Read key.json and every answer (medddpm.study.responses) and compute (medddpm.study.analysis).
3. Write analysis.json, answers.csv, report.html and report.md in a temporary folder renamed into place.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medddpm.errors import InputError
from medddpm.output_folder import STUDY_REPORT_FOLDER, atomic_folder, check_output
from medddpm.study.analysis import analyse, read_metrics_csv
from medddpm.study.report import write_report
from medddpm.study.responses import collect
from medddpm.study.server import load_key


def analyze_study(
    study_dir: str | Path,
    report_dir: str | Path,
    exports: Sequence[str | Path] = (),
    *,
    metrics_csv: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Analyse every answer of a study; write REPORT_DIR; return analysis.json's content."""
    study_dir, report_dir = Path(study_dir), Path(report_dir)
    check_output(report_dir, STUDY_REPORT_FOLDER, overwrite=overwrite, inputs=[study_dir])
    key = load_key(study_dir)
    answers = collect(study_dir, [Path(p) for p in exports], key)
    if not answers:
        raise InputError(
            "no answers: neither responses/*.jsonl (from `study serve`) nor exported answer files given",
            study_dir,
        )
    metrics = None if metrics_csv is None else read_metrics_csv(Path(metrics_csv), key)
    result = analyse(key, answers, metrics)
    with atomic_folder(report_dir) as tmp:
        write_report(tmp, result)
        public = {k: v for k, v in result.items() if k != "rows"}
        (tmp / "analysis.json").write_text(json.dumps(public, indent=2, allow_nan=False) + "\n")
    return result
