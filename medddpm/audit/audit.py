"""``audit``: training, held-out and synthetic folders -> AUDIT_DIR (audit.json, report.html, figures).

1. Check the audit folder (output_folder.AUDIT_FOLDER); nothing is written until step 3.
2. Measure (medddpm.audit.measure): every number of audit.json.
3. Render (medddpm.audit.report) into a temporary folder beside AUDIT_DIR, write audit.json, then
   rename it into place: a failed audit leaves nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medddpm.audit.measure import AuditSettings, measure_audit
from medddpm.audit.report import write_report
from medddpm.output_folder import AUDIT_FOLDER, atomic_folder, check_output
from medddpm.runtime import stopwatch


def _no_log(message: str) -> None:
    pass


@dataclass
class AuditResult:
    result: dict[str, Any]
    """audit.json's content."""
    audit_dir: Path
    html: Path
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def audit(
    training_dir: str | Path,
    heldout_dir: str | Path,
    synthetic_dir: str | Path,
    audit_dir: str | Path,
    settings: AuditSettings | None = None,
    *,
    run_dir: str | Path | None = None,
    feature_weights: str | Path | None = None,
    device: str = "auto",
    overwrite: bool = False,
    log: Callable[[str], None] = _no_log,
) -> AuditResult:
    """Audit the synthetic scans for copies of training scans against the held-out baseline; write AUDIT_DIR.

    Arguments after ``audit_dir`` are those of medddpm.audit.measure.measure_audit. Raises InputError, with
    nothing written, for bad input: a missing or too small set, a folder given twice, a corrupt scan,
    differing shapes without ``run_dir``, bad settings, or an audit folder that is not empty (without
    ``overwrite``) or overlaps an input folder.
    """
    started = time.perf_counter()
    audit_dir = Path(audit_dir)
    inputs = [Path(training_dir), Path(heldout_dir), Path(synthetic_dir)]
    check_output(audit_dir, AUDIT_FOLDER, overwrite=overwrite, inputs=inputs)
    m = measure_audit(
        training_dir,
        heldout_dir,
        synthetic_dir,
        settings,
        run_dir=run_dir,
        feature_weights=feature_weights,
        device=device,
        log=log,
    )
    with atomic_folder(audit_dir) as tmp:
        with stopwatch(m.seconds, m.cpu_seconds)("report"):
            write_report(tmp, m)
        m.seconds["total"] = time.perf_counter() - started
        m.result["seconds"] = {k: round(v, 3) for k, v in m.seconds.items()}
        (tmp / "audit.json").write_text(json.dumps(m.result, indent=2, allow_nan=False) + "\n")
    return AuditResult(m.result, audit_dir, audit_dir / "report.html", m.seconds, m.cpu_seconds)
