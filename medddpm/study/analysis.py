"""``study analyze``'s numbers: key.json + answers -> analysis.json's content (plain data).

Scoring by task (medddpm.study.tasks):

- binary: an answer is correct when it names the volume's source; "synthetic" is the positive class
  for sensitivity / specificity, and the confidence 1-5 orders the answers for the ROC curve;
- 2afc: correct when it names the real side; chance is 50% exactly;
- rating: no right answer; each scale's ratings of real against synthetic volumes (Mann-Whitney).

Across readers: κ on the cases every reader answered (Cohen's for two readers, Fleiss' for more) and
a pooled accuracy with a bootstrap over readers and cases. Automatic scores: for every synthetic
volume, the readers' verdict (binary: share who called it synthetic; 2afc: share who took it for the
real one; rating: mean realism) against each score (key.json's nearest-real correlation, and the
columns of a ``--metrics`` CSV), by Spearman's ρ.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medddpm.errors import InputError
from medddpm.study import statistics as st
from medddpm.study.tasks import RATING_SCALES, TASKS

BOOTSTRAP_SEED = 0
POWER = {"alpha": 0.05, "power": 0.8}


def correct(task: str, answer: dict[str, Any], case: dict[str, Any]) -> bool | None:
    """Whether an answer names the truth (None for rating tasks)."""
    verdict = TASKS[task].verdict
    return None if verdict is None else str(answer.get(verdict)) == case["truth"]


def answer_rows(key: dict[str, Any], answers: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    """One row per (reader, case) answered: what answers.csv holds, truth and correctness included."""
    task = TASKS[key["task"]]
    rows = []
    for reader, by_case in answers.items():
        for case_id, a in sorted(by_case.items()):
            case = key["cases"][case_id]
            row = {"reader": reader, "case": case_id, "volumes": " ".join(case["volumes"])}
            row["files"] = " ".join(key["volumes"][v]["file"] for v in case["volumes"])
            row["truth"] = case["truth"]
            row.update({q.key: a.get(q.key) for q in task.questions})
            row["correct"] = correct(key["task"], a, case)
            row["comment"] = a.get("comment", "")
            row["time"] = a.get("time", "")
            rows.append(row)
    return rows


def _reader_binary(rows: list[dict[str, Any]], task: str) -> dict[str, Any]:
    out = st.accuracy(sum(bool(r["correct"]) for r in rows), len(rows))
    if task == "binary":
        truth = [r["truth"] == "synthetic" for r in rows]
        called = [r["answer"] == "synthetic" for r in rows]
        out.update(st.sensitivity_specificity(truth, called))
        out["auc"] = st.roc_auc(truth, st.confidence_score(called, [int(r["confidence"]) for r in rows]))
    return out


def read_metrics_csv(path: Path, key: dict[str, Any]) -> dict[str, dict[str, float]]:
    """score name -> synthetic volume id -> value, from a CSV with a ``file`` column (a synthetic file's
    name, as the synthetic folder holds it) and numeric score columns."""
    by_name = {Path(v["file"]).name: vid for vid, v in key["volumes"].items() if v["truth"] == "synthetic"}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            table = list(reader)
            columns = [c for c in reader.fieldnames or [] if c != "file"]
    except OSError as e:
        raise InputError(f"cannot read the metrics ({e.strerror or e})", path) from None
    if not table or "file" not in table[0] or not columns:
        raise InputError("a metrics CSV needs a 'file' column and at least one score column", path)
    scores: dict[str, dict[str, float]] = {c: {} for c in columns}
    for line, row in enumerate(table, 2):
        vid = by_name.get(Path(row["file"]).name)
        if vid is None:
            continue  # a synthetic file the study did not pick
        for c in columns:
            try:
                scores[c][vid] = float(row[c])
            except (TypeError, ValueError):
                raise InputError(f"line {line}: {c} = {row[c]!r} is not a number", path) from None
    return scores


def _verdicts(key: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, float]:
    """Synthetic volume id -> the readers' verdict on it (module docstring)."""
    values: dict[str, list[float]] = {}
    for r in rows:
        case = key["cases"][r["case"]]
        for side, vid in zip("AB", case["volumes"], strict=False):
            if key["volumes"][vid]["truth"] != "synthetic":
                continue
            if key["task"] == "binary":
                v = float(r["answer"] == "synthetic")
            elif key["task"] == "2afc":
                v = float(r["answer"] == side)  # taken for the real one
            else:
                v = float(r["realism"])
            values.setdefault(vid, []).append(v)
    return {vid: float(np.mean(v)) for vid, v in values.items()}


VERDICT_LABELS = {
    "binary": "share of readers who called it synthetic",
    "2afc": "share of readers who took it for the real one",
    "rating": "mean realism rating",
}


def analyse(
    key: dict[str, Any],
    answers: dict[str, dict[str, dict]],
    metrics: dict[str, dict[str, float]] | None = None,
    resamples: int = 2000,
) -> dict[str, Any]:
    """Every number of analysis.json from key.json's content and reader -> case -> answer."""
    task = TASKS[key["task"]]
    for reader, by_case in answers.items():
        for case_id, a in by_case.items():
            if not task.complete(a):
                raise InputError(f"reader {reader}'s answer to case {case_id} is incomplete: {a}")
    rows = answer_rows(key, answers)
    readers = sorted(answers)
    cases = list(key["cases"])
    result: dict[str, Any] = {
        "task": key["task"],
        "study": key["study"],
        "readers": readers,
        "n_cases": len(cases),
        "n_answers": len(rows),
        "answered": {r: len(answers[r]) for r in readers},
    }
    complete_cases = [c for c in cases if all(c in answers[r] for r in readers)]
    if task.verdict is not None:
        result["per_reader"] = {
            r: _reader_binary([x for x in rows if x["reader"] == r], key["task"]) for r in readers
        }
        matrix = np.array(
            [[answers[r][c][task.verdict] for r in readers] for c in complete_cases], dtype=object
        )
        result["agreement"] = st.agreement(matrix.reshape(len(complete_cases), len(readers)))
        grid = np.full((len(readers), len(cases)), np.nan)
        for i, r in enumerate(readers):
            for j, c in enumerate(cases):
                if c in answers[r]:
                    grid[i, j] = correct(key["task"], answers[r][c], key["cases"][c])
        # the Wilson interval treats every decision as independent; the bootstrap over readers and
        # cases does not, and is the one reported
        pooled = st.accuracy(int(np.nansum(grid)), int((~np.isnan(grid)).sum()))
        pooled["ci95_wilson"] = pooled.pop("ci95")
        boot = st.pooled_bootstrap(grid, np.random.default_rng(BOOTSTRAP_SEED), resamples)
        pooled["ci95"], pooled["resamples"] = boot["ci95"], boot["resamples"]
        result["pooled"] = pooled
        acc = pooled["accuracy"]
        result["power"] = {
            **POWER,
            "observed_accuracy": acc,
            "decisions_needed": None if acc is None else st.decisions_needed(acc, **POWER),
            "decisions_made": pooled["n"],
        }
    else:
        scales = {}
        for scale in RATING_SCALES:
            by_truth = {t: [int(x[scale]) for x in rows if x["truth"] == t] for t in ("real", "synthetic")}
            scales[scale] = {
                "counts": {t: [v.count(level) for level in range(1, 5)] for t, v in by_truth.items()},
                "mean": {t: (float(np.mean(v)) if v else None) for t, v in by_truth.items()},
                "mann_whitney": st.mann_whitney(by_truth["real"], by_truth["synthetic"]),
                "agreement": st.agreement(
                    np.array(
                        [[answers[r][c][scale] for r in readers] for c in complete_cases], dtype=object
                    ).reshape(len(complete_cases), len(readers))
                ),
            }
        result["scales"] = scales
    verdicts = _verdicts(key, rows)
    scores = {
        "nearest_real_correlation": {vid: v["nearest_real_correlation"] for vid, v in key["volumes"].items()}
    }
    scores.update(metrics or {})
    correlations = {}
    for name, values in scores.items():
        ids = [vid for vid in verdicts if values.get(vid) is not None]
        correlations[name] = st.spearman([values[v] for v in ids], [verdicts[v] for v in ids])
    result["metrics"] = {"verdict": VERDICT_LABELS[key["task"]], "spearman": correlations}
    result["rows"] = rows
    return result


def csv_columns(task: str) -> Sequence[str]:
    return [
        "reader",
        "case",
        "volumes",
        "files",
        "truth",
        *(q.key for q in TASKS[task].questions),
        "correct",
        "comment",
        "time",
    ]
