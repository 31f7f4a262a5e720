"""Conditions in an evaluation: each set's per-file conditions, metrics per stratum, and the condition check.

Where the conditions come from:

- synthetic: what ``medddpm sample`` wrote, the JSON sidecar beside each file (``sample_0000.json``
  beside ``sample_0000.nii.gz``, ``NAME_img.json`` beside ``NAME_img.nii.gz``), else the folder's
  ``manifest.json`` (its ``samples``: file -> conditions). A value of None is a variable the sample
  left unknown.
- real: a table in train's format (``evaluate --conditions table.csv``: a ``file`` column and one
  column per variable), matched to the real scans by medddpm.data.conditions.match_table, with
  train's rules and errors. Its variables, and their kinds, are the ones evaluated.

Strata. A stratum is one category of one categorical variable (``group=A``), not a cross of several
variables (whose cells soon hold too few volumes). Its metrics are those of the features of its real
and synthetic volumes (FID, MMD², PRDC; the caller's ``feature_metrics``), reported when each set has
at least MIN_STRATUM_VOLUMES volumes in it. Continuous variables are not stratified; the check below
covers them.

Condition check. Per variable, a simple model learns the variable from the real volumes' features
(the feature network the evaluation already uses): a logistic regression for a categorical variable,
a ridge regression for a continuous one, both on standardised features (scikit-learn). Its
cross-validated score on the real set is the ceiling: how well the features show the variable in
real scans. Fitted on every real volume, it then predicts each synthetic volume's variable, scored
against what the sample requested: accuracy (categorical) or Pearson's r and the mean absolute
error (continuous). A model that ignores a condition makes samples whose predicted variable does not
follow the request: accuracy near chance (the largest category's share), r near 0.

The reading compares the synthetic score with the ceiling, above chance, in measures a set-wide
shift of the synthetic features does not move (synthetic volumes a little blurred or with a noise
floor lie apart from the real ones in feature space, and a model fitted on real features then moves
all its predictions alike): for a categorical variable the ranking, (AUC - 0.5) / (AUC_real - 0.5),
with the mean one-vs-rest ROC AUC of the predicted probabilities; for a continuous one r_synthetic /
r_real. When every synthetic volume asked for one category there is no ranking to read, and the
accuracy is read instead, (accuracy - chance) / (ceiling - chance). At least OBEYED_FRACTION: obeyed;
at most IGNORED_FRACTION: ignored; between: partly. When the ceiling itself is close to chance (within
MIN_CEILING_GAIN of it, or r_real below MIN_CEILING_R), the features do not show the variable even in
real scans and the check cannot tell: undetermined. Accuracy and error are reported beside: they
are what a shift does move.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medddpm.data.conditions import ConditionSpec, TrainingConditions, Value, Variable
from medddpm.errors import InputError

MIN_STRATUM_VOLUMES = 5
"""Volumes of a stratum each set needs for its metrics: with fewer, FID and MMD² are mostly noise
(and PRDC needs more than its k = 5 neighbours by default)."""
MAX_FOLDS = 5
"""Cross-validation folds on the real set (fewer when a category has fewer volumes)."""
OBEYED_FRACTION = 0.7
IGNORED_FRACTION = 0.3
MIN_CEILING_GAIN = 0.1
"""Cross-validated accuracy must beat chance by this much for the check to say anything."""
COLLAPSED_SHARE = 0.9
"""The classifier putting at least this share of the synthetic volumes in one category, when fewer
asked for it, is named in the sentence: a set-wide shift, not the condition, decides its accuracy."""
MIN_CEILING_R = 0.3
"""Cross-validated correlation on the real set below which the check says nothing."""
SIDECAR_SUFFIXES = (".nii.gz", ".nii")


# --------------------------------------------------------------------------------------------------
# Each set's conditions
# --------------------------------------------------------------------------------------------------


def sidecar_path(scan: Path) -> Path:
    """The JSON ``medddpm sample`` writes beside ``scan``: NAME.json for NAME.nii.gz or NAME.nii."""
    name = scan.name
    for suffix in SIDECAR_SUFFIXES:
        if name.endswith(suffix):
            return scan.with_name(name[: -len(suffix)] + ".json")
    return scan.with_suffix(".json")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"cannot read this JSON file ({e})", path) from None


def _conditions_of(record: Any, source: Path) -> dict[str, Value] | None:
    if not isinstance(record, dict) or "conditions" not in record:
        return None
    conditions = record["conditions"]
    if not isinstance(conditions, dict) or not all(
        v is None or isinstance(v, str | int | float) for v in conditions.values()
    ):
        raise InputError("'conditions' must map each variable to a value", source)
    return conditions


def read_synthetic_conditions(
    folder: Path, files: Sequence[Path]
) -> tuple[list[dict[str, Value]], str] | None:
    """Each synthetic file's requested conditions (see the module docstring) and where they were read.

    None when no file carries conditions, or every value is unknown (unconditional samples). InputError
    for an unreadable sidecar or manifest, or a file without conditions in a set where others have them.
    """
    folder = Path(folder)
    manifest: dict[str, Any] = {}
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        samples = _read_json(manifest_path)
        samples = samples.get("samples", []) if isinstance(samples, dict) else []
        for record in samples if isinstance(samples, list) else []:
            if isinstance(record, dict) and isinstance(record.get("file"), str):
                manifest[record["file"]] = record
    rows: list[dict[str, Value] | None] = []
    sources = set()
    for path in files:
        sidecar = sidecar_path(Path(path))
        found = _conditions_of(_read_json(sidecar), sidecar) if sidecar.is_file() else None
        if found is not None:
            sources.add("JSON sidecars")
        else:
            relative = Path(path).relative_to(folder).as_posix() if Path(path).is_relative_to(folder) else ""
            record = manifest.get(relative, manifest.get(Path(path).name))
            found = _conditions_of(record, manifest_path)
            if found is not None:
                sources.add("manifest.json")
        rows.append(found)
    if all(r is None or all(v is None for v in r.values()) for r in rows):
        return None
    missing = next((Path(f) for f, r in zip(files, rows, strict=True) if r is None), None)
    if missing is not None:
        raise InputError(
            "this synthetic scan has no conditions (no JSON sidecar, no manifest.json entry) while others "
            "have; evaluate a folder `medddpm sample` wrote, or move the scan out",
            missing,
        )
    return [r or {} for r in rows], " and ".join(sorted(sources))


def typed_rows(
    spec: ConditionSpec, rows: Sequence[dict[str, Value]], where: Sequence[Path]
) -> list[dict[str, Value]]:
    """``rows`` with the spec's variables only, in its types (category str, number float, None unknown).

    InputError naming the file for a value a continuous variable cannot take.
    """
    out = []
    for row, at in zip(rows, where, strict=True):
        typed: dict[str, Value] = {}
        for var in spec.variables:
            raw = row.get(var.name)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                typed[var.name] = None
            elif var.kind == "categorical":
                typed[var.name] = str(raw).strip()
            else:
                number = _finite(raw)
                if number is None:
                    raise InputError(
                        f"'{var.name}' is continuous in the real set's table but this sample requested "
                        f"'{raw}', not a number",
                        at,
                    )
                typed[var.name] = number
        out.append(typed)
    return out


def _finite(raw: Value) -> float | None:
    try:
        x = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------------
# Metrics per stratum
# --------------------------------------------------------------------------------------------------

STRATUM_KEYS = ("fid", "mmd", "precision", "recall", "density", "coverage")


def stratum_metrics(
    spec: ConditionSpec,
    real_rows: Sequence[dict[str, Value]],
    synth_rows: Sequence[dict[str, Value]],
    features: dict[str, np.ndarray],
    feature_metrics: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
    min_volumes: int = MIN_STRATUM_VOLUMES,
) -> list[dict[str, Any]]:
    """One entry per category of each categorical variable, in the spec's order: its counts in each set,
    and ``feature_metrics(real [n, F], synthetic [m, F])``'s STRATUM_KEYS when both counts reach
    ``min_volumes``, else ``skipped`` saying why. Categories requested only by synthetic samples count too.
    """
    out = []
    for var in spec.variables:
        if var.kind != "categorical":
            continue
        requested = {r[var.name] for r in synth_rows if r.get(var.name) is not None}
        for category in [*var.categories, *sorted(requested - set(var.categories))]:
            real_idx = [i for i, r in enumerate(real_rows) if r.get(var.name) == category]
            synth_idx = [i for i, r in enumerate(synth_rows) if r.get(var.name) == category]
            entry: dict[str, Any] = {
                "variable": var.name,
                "category": category,
                "n_real": len(real_idx),
                "n_synthetic": len(synth_idx),
            }
            if min(len(real_idx), len(synth_idx)) < min_volumes:
                entry.update(dict.fromkeys(STRATUM_KEYS))
                entry["skipped"] = (
                    f"fewer than {min_volumes} volumes in a set "
                    f"({len(real_idx)} real, {len(synth_idx)} synthetic)"
                )
            else:
                m = feature_metrics(features["real"][real_idx], features["synthetic"][synth_idx])
                entry.update({k: m.get(k) for k in STRATUM_KEYS})
                entry["skipped"] = None
            out.append(entry)
    return out


# --------------------------------------------------------------------------------------------------
# The condition check
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckModel:
    """How one kind of variable is predicted from features."""

    description: str
    build: Callable[[], Any]
    """A fresh scikit-learn estimator."""


def _classifier():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))


def _regressor():
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))


CHECK_MODELS = {
    "categorical": CheckModel("logistic regression (L2, C = 1) on standardised features", _classifier),
    "continuous": CheckModel(
        "ridge regression on standardised features (penalty chosen by leave-one-out among 1e-2 .. 1e4)",
        _regressor,
    ),
}
"""The predictor of each kind of variable: one entry per kind, as the spec's kinds are."""


def pearson_r(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's correlation of two vectors; None when either is constant (or fewer than 3 values)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    xc, yc = x - x.mean(), y - y.mean()
    return float(np.clip((xc @ yc) / math.sqrt((xc @ xc) * (yc @ yc)), -1.0, 1.0))


def ovr_auc(labels: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float | None:
    """Mean one-vs-rest ROC AUC of ``proba`` [N, len(classes)] against ``labels``, over the classes
    that label some volumes but not all; None when there is no such class (one label only).

    The AUC ranks volumes by their score for a class, so it does not move when every score moves
    alike: a synthetic set whose features lie apart from the real ones as a whole (blur, a noise
    floor) shifts every prediction towards one category and costs accuracy, not AUC.
    """
    from sklearn.metrics import roc_auc_score

    aucs = []
    for j, c in enumerate(classes):
        positive = labels == c
        if 0 < positive.sum() < len(labels):
            aucs.append(float(roc_auc_score(positive, proba[:, j])))
    return float(np.mean(aucs)) if aucs else None


def _largest_share(labels: Sequence[str]) -> float:
    """The accuracy of always guessing the commonest label: chance for a classifier."""
    _, counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)
    return float(counts.max() / counts.sum())


def _unavailable(var: Variable, reason: str, **counts: int) -> dict[str, Any]:
    return {
        "variable": var.name,
        "kind": var.kind,
        "model": CHECK_MODELS[var.kind].description,
        **counts,
        "real_cv": None,
        "synthetic": None,
        "reading": "undetermined",
        "unavailable": reason,
        "sentence": f"The condition check of '{var.name}' was not run: {reason}.",
    }


def check_variable(
    var: Variable,
    real_features: np.ndarray,
    real_values: Sequence[Value],
    synth_features: np.ndarray,
    synth_values: Sequence[Value],
    seed: int = 0,
) -> dict[str, Any]:
    """The condition check of one variable (see the module docstring): plain types for metrics.json.

    ``*_values``: per volume, the real value or the synthetic request (None: unknown, left out).
    """
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    r_idx = [i for i, v in enumerate(real_values) if v is not None]
    s_idx = [i for i, v in enumerate(synth_values) if v is not None]
    counts = {"n_real": len(r_idx), "n_synthetic": len(s_idx)}
    if not s_idx:
        return _unavailable(var, "no synthetic volume requested a value for it", **counts)
    Xr, Xs = real_features[r_idx].astype(np.float64), synth_features[s_idx].astype(np.float64)
    model = CHECK_MODELS[var.kind]
    if var.kind == "categorical":
        yr = np.asarray([str(real_values[i]) for i in r_idx], dtype=str)
        ys = np.asarray([str(synth_values[i]) for i in s_idx], dtype=str)
        categories, per_category = np.unique(yr, return_counts=True)
        if len(categories) < 2 or per_category.min() < 2:
            why = "the real set needs at least 2 categories with 2 volumes each for cross-validation"
            return _unavailable(var, why, **counts)
        folds = int(min(MAX_FOLDS, per_category.min()))
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        cv_proba = cross_val_predict(model.build(), Xr, yr, cv=cv, method="predict_proba")
        fitted = model.build().fit(Xr, yr)
        classes = fitted.classes_
        ceiling = float(np.mean(classes[cv_proba.argmax(1)] == yr))
        chance_real = _largest_share(list(yr))
        predicted = fitted.predict(Xs)
        accuracy = float(np.mean(predicted == ys))
        auc_real, auc_synth = ovr_auc(yr, cv_proba, classes), ovr_auc(ys, fitted.predict_proba(Xs), classes)
        # chance: guessing the commonest request; when all asked for one category, a classifier that
        # ignores the request hits it as often as the real set holds it
        chance_synth = _largest_share(list(ys)) if auc_synth is not None else float(np.mean(yr == ys[0]))
        entry = {
            "variable": var.name,
            "kind": var.kind,
            "model": model.description,
            **counts,
            "real_cv": {"accuracy": ceiling, "chance": chance_real, "auc": auc_real, "folds": folds},
            "synthetic": {
                "accuracy": accuracy,
                "chance": chance_synth,
                "auc": auc_synth,
                "predicted_share": _largest_share(list(predicted)),
            },
            "unavailable": None,
        }
        if auc_real is not None and auc_synth is not None:  # the ranking: immune to a set-wide shift
            gain = auc_real - 0.5
            fraction = None if gain < MIN_CEILING_GAIN else (auc_synth - 0.5) / gain
        else:  # every synthetic volume asked for one category: only the accuracy can be read
            gain = ceiling - chance_real
            fraction = None if gain < MIN_CEILING_GAIN else (accuracy - chance_synth) / gain
        entry["reading"] = _reading(fraction)
        entry["sentence"] = _categorical_sentence(var.name, entry, fraction)
        return entry

    yr = np.asarray([float(real_values[i]) for i in r_idx])  # type: ignore[arg-type]
    ys = np.asarray([float(synth_values[i]) for i in s_idx])  # type: ignore[arg-type]
    if len(yr) < 4 or np.ptp(yr) == 0:
        return _unavailable(var, "the real set needs at least 4 volumes with differing values", **counts)
    folds = int(min(MAX_FOLDS, len(yr)))
    cv_pred = cross_val_predict(model.build(), Xr, yr, cv=KFold(folds, shuffle=True, random_state=seed))
    r_real = pearson_r(cv_pred, yr)
    predicted = model.build().fit(Xr, yr).predict(Xs)
    r_synth = pearson_r(predicted, ys)
    entry = {
        "variable": var.name,
        "kind": var.kind,
        "model": model.description,
        **counts,
        "real_cv": {"r": r_real, "mae": float(np.mean(np.abs(cv_pred - yr))), "folds": folds},
        "synthetic": {
            "r": r_synth,
            "mae": float(np.mean(np.abs(predicted - ys))),
            "mae_of_real_mean": float(np.mean(np.abs(yr.mean() - ys))),
        },
        "unavailable": None,
    }
    fraction = None if r_real is None or r_real < MIN_CEILING_R or r_synth is None else r_synth / r_real
    entry["reading"] = _reading(fraction)
    entry["sentence"] = _continuous_sentence(var.name, entry, fraction)
    return entry


def _reading(fraction: float | None) -> str:
    if fraction is None:
        return "undetermined"
    if fraction >= OBEYED_FRACTION:
        return "obeyed"
    return "ignored" if fraction <= IGNORED_FRACTION else "partly"


VERDICTS = {
    "obeyed": "The synthetic volumes show the requested {name} about as clearly as real volumes show theirs: "
    "the model obeys this condition.",
    "partly": "That lies between chance and what real volumes reach: the model follows this condition only "
    "in part.",
    "ignored": "That is close to chance: the model seems to ignore this condition.",
}


def _categorical_sentence(name: str, e: dict[str, Any], fraction: float | None) -> str:
    real, synth = e["real_cv"], e["synthetic"]
    text = (
        f"A classifier trained on the real volumes' features tells their '{name}' with "
        f"{real['accuracy']:.0%} accuracy in {real['folds']}-fold cross-validation "
        f"(chance {real['chance']:.0%}{_auc(real)}); "
        f"on the synthetic volumes it finds the requested '{name}' in {synth['accuracy']:.0%} "
        f"(chance {synth['chance']:.0%}{_auc(synth)})."
    )
    if synth["auc"] is not None and synth["predicted_share"] >= COLLAPSED_SHARE > synth["chance"]:
        text += (
            f" It puts {synth['predicted_share']:.0%} of the synthetic volumes in one category: their "
            "features lie apart from the real volumes' as a whole (precision and coverage show how far), "
            "which moves every prediction alike, so the check reads the ranking of its scores (AUC), "
            "which such a shift leaves alone."
        )
    if fraction is None:
        return text + (
            f" The features hardly show '{name}' even in real volumes, so this check cannot say whether the "
            "model obeys it."
        )
    return text + " " + VERDICTS[e["reading"]].format(name=f"'{name}'")


def _auc(score: dict[str, Any]) -> str:
    return "" if score["auc"] is None else f"; AUC {score['auc']:.2f}, chance 0.50"


def _fmt_r(r: float | None) -> str:
    return "undefined" if r is None else f"{r:.2f}"


def _continuous_sentence(name: str, e: dict[str, Any], fraction: float | None) -> str:
    real, synth = e["real_cv"], e["synthetic"]
    text = (
        f"A regression trained on the real volumes' features predicts their '{name}' with r = "
        f"{_fmt_r(real['r'])} in {real['folds']}-fold cross-validation "
        f"(mean absolute error {real['mae']:.3g}); on the synthetic volumes its predictions follow the "
        f"requested '{name}' with r = {_fmt_r(synth['r'])} "
        f"(mean absolute error {synth['mae']:.3g}; {synth['mae_of_real_mean']:.3g} for always guessing the "
        "real mean)."
    )
    if fraction is None:
        if synth["r"] is None and real["r"] is not None and real["r"] >= MIN_CEILING_R:
            return text + " Every synthetic volume requested the same value, so only the error can be read."
        return text + (
            f" The features hardly show '{name}' even in real volumes, so this check cannot say whether the "
            "model obeys it."
        )
    return text + " " + VERDICTS[e["reading"]].format(name=f"'{name}'")


# --------------------------------------------------------------------------------------------------
# Both together: metrics.json's "conditions"
# --------------------------------------------------------------------------------------------------


def condition_metrics(
    real: TrainingConditions,
    synth_rows: Sequence[dict[str, Value]],
    synth_source: str,
    features: dict[str, np.ndarray],
    feature_metrics: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
    seed: int = 0,
) -> dict[str, Any]:
    """metrics.json's ``conditions``: the variables, where each set's conditions came from, the metrics
    per stratum and the condition check of every variable. ``synth_rows``: typed (``typed_rows``)."""
    spec = real.spec
    return {
        "variables": spec.to_dict(),
        "real_table": str(real.table),
        "synthetic_source": synth_source,
        "min_stratum_volumes": MIN_STRATUM_VOLUMES,
        "strata": stratum_metrics(spec, real.rows, synth_rows, features, feature_metrics),
        "check": [
            check_variable(
                var,
                features["real"],
                [r.get(var.name) for r in real.rows],
                features["synthetic"],
                [r.get(var.name) for r in synth_rows],
                seed=seed,
            )
            for var in spec.variables
        ],
        "check_thresholds": {
            "obeyed_fraction": OBEYED_FRACTION,
            "ignored_fraction": IGNORED_FRACTION,
            "min_ceiling_gain": MIN_CEILING_GAIN,
            "min_ceiling_r": MIN_CEILING_R,
        },
    }
