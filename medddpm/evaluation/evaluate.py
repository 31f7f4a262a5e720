"""``evaluate``: a folder of real scans and a folder of synthetic ones -> REPORT_DIR.

1. Check the report folder; nothing is written until step 3.
2. Measure (medddpm.evaluation.measure): every number of metrics.json, with the preprocessed sets.
3. Render (medddpm.evaluation.report) into a temporary folder beside REPORT_DIR: report.html,
   report.md and their PNGs, metrics.json, features.npz on request; then rename it into place, so a
   failed evaluation leaves nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medddpm.config import EvalConfig
from medddpm.evaluation.measure import eval_config, measure
from medddpm.evaluation.report import write_report
from medddpm.output_folder import REPORT_FOLDER, atomic_folder, check_output
from medddpm.runtime import stopwatch


def _no_log(message: str) -> None:
    pass


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    """metrics.json's content."""
    report_dir: Path
    html: Path
    markdown: Path
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def evaluate(
    real_dir: str | Path,
    synth_dir: str | Path,
    report_dir: str | Path,
    cfg: EvalConfig | None = None,
    *,
    run_dir: str | Path | None = None,
    feature_weights: str | Path | None = None,
    device: str = "auto",
    save_features: bool = False,
    conditions: str | Path | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = _no_log,
) -> EvaluationResult:
    """Compare the scans below ``synth_dir`` with those below ``real_dir``; write REPORT_DIR.

    ``cfg``, ``run_dir``, ``feature_weights``, ``device``, ``conditions`` and ``log`` are those of
    ``measure`` (cfg None: the run's eval section, or the defaults). ``save_features`` also writes
    features.npz (arrays real [N, F] and synthetic [M, F]). Raises InputError, with nothing written,
    for bad input: an empty folder, a set of one, differing shapes, a bad weights file, a corrupt
    scan, or a report folder that is not empty (without ``overwrite``) or overlaps an input folder;
    with ``conditions``, a table that does not match the real scans, or synthetic scans that carry
    no conditions.
    """
    started = time.perf_counter()
    report_dir = Path(report_dir)
    check_output(report_dir, REPORT_FOLDER, overwrite=overwrite, inputs=[Path(real_dir), Path(synth_dir)])
    cfg = eval_config(run_dir) if cfg is None else cfg
    m = measure(
        real_dir,
        synth_dir,
        cfg,
        run_dir=run_dir,
        feature_weights=feature_weights,
        device=device,
        conditions=conditions,
        log=log,
    )
    metrics, seconds = m.metrics, m.seconds

    # 3. Write the report beside its final place, then rename ------------------------------------------
    with atomic_folder(report_dir) as tmp:
        with stopwatch(seconds, m.cpu_seconds)("report"):
            write_report(tmp, m)
            if save_features:
                np.savez_compressed(tmp / "features.npz", **m.features)
        seconds["total"] = time.perf_counter() - started
        metrics["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return EvaluationResult(
        metrics, report_dir, report_dir / "report.html", report_dir / "report.md", seconds, m.cpu_seconds
    )
