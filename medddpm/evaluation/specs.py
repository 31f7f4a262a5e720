"""The metrics ``medddpm evaluate`` reports, one entry each: the table every output reads.

metrics.json, the console table, report.html, report.md, the report's summary and the caveats list
take the metrics, their order and every word said about them from METRICS, and nowhere else. A
MetricSpec says where the value comes from (``value``, a function of the measurement), how it is
shown (label, direction, meaning, number format, an interval beside it) and what is said about it:
the short caveat in its table row, its note in the caveats list, its sentence in the summary.

Adding a metric = its function + one entry in METRICS. Two orders:

- METRICS's own order is that of the values in metrics.json and of the summary's sentences;
- ``row`` orders the tables' rows and the notes in the caveats list.

The wording functions read metrics.json's content (a dict of plain types), so a report can be
written again from metrics.json alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

Metrics = dict[str, Any]
"""The content of metrics.json."""


@dataclass(frozen=True)
class MetricInputs:
    """What metric functions read: both sets, their features, and the computations several metrics share."""

    volumes: dict[str, torch.Tensor]
    """"real" [N, 1, D, H, W] and "synthetic" [M, 1, D, H, W], float32 on [0, 1]."""
    features: dict[str, np.ndarray]
    """"real" [N, F] and "synthetic" [M, F], float64."""
    feature_metrics: dict[str, Any]
    """FID, MMD² and PRDC of the features with their settings (medddpm.evaluation.measure.feature_metrics)."""
    ms_ssim: dict[str, dict[str, Any]]
    """"real" and "synthetic": medddpm.evaluation.metrics.pairwise_ms_ssim of each set."""


@dataclass(frozen=True)
class MetricSpec:
    """One reported metric: where its value comes from, how it is shown and what is said about it."""

    key: str
    """Its key in metrics.json."""
    label: str
    """Its name in the tables."""
    direction: str
    """Which way is better, as the tables show it."""
    meaning: str
    """What it says, in one or two sentences for the report's table."""
    number_format: str
    """Format spec of its value (and interval) in the tables, e.g. ".4g"."""
    value: Callable[[MetricInputs], float | None]
    """Its value; None when it cannot be computed (the tables then say "unavailable")."""
    caveat: str | Callable[[Metrics], str]
    """The caveat beside its row in the report."""
    row: int
    """Position of its row in the tables, and of its note in the caveats list."""
    interval: Callable[[MetricInputs], list[float | None]] | None = None
    """A 95% interval [low, high], written to metrics.json as ``<key>_ci95`` and shown after the value."""
    note: Callable[[Metrics], str | None] | None = None
    """Its entry in the caveats list; a note several metrics share (PRDC's four) is given once."""
    summary: Callable[[Metrics], str | None] | None = None
    """Its sentence in the report's summary, in METRICS order."""

    @property
    def interval_key(self) -> str:
        return f"{self.key}_ci95"

    def format(self, metrics: Metrics) -> str:
        """The value as the tables show it, with its interval when it has one."""
        value = metrics.get(self.key)
        if value is None:
            return "unavailable"
        text = f"{value:{self.number_format}}"
        if self.interval is not None:
            lo, hi = metrics.get(self.interval_key, [None, None])
            if lo is not None:
                text += f" (95% CI {lo:{self.number_format}}–{hi:{self.number_format}})"
        return text

    def caveat_for(self, metrics: Metrics) -> str:
        return self.caveat if isinstance(self.caveat, str) else self.caveat(metrics)


def table_rows() -> list[MetricSpec]:
    """The metrics in the order of the tables' rows."""
    return sorted(METRICS.values(), key=lambda spec: spec.row)


# --------------------------------------------------------------------------------------------------
# What is said about each metric
# --------------------------------------------------------------------------------------------------


def _fid_caveat(m: Metrics) -> str:
    if m["fid_covariance_rank_deficient"]:
        dim = m["feature_extractor"]["feature_dim"]
        return (
            f"Fewer volumes than feature dimensions ({dim}): the covariances are rank-deficient and the FID "
            "is dominated by that; compare only at equal numbers of volumes."
        )
    return "Biased upwards at small N; compare only at equal numbers of volumes and the same network."


def _fid_note(m: Metrics) -> str:
    if m["fid_covariance_rank_deficient"]:
        dim = m["feature_extractor"]["feature_dim"]
        return (
            f"FID: with {m['n_real']} real and {m['n_synthetic']} synthetic volumes but {dim} feature "
            f"dimensions, both covariance matrices are rank-deficient (rank at most N - 1 < {dim}). The FID "
            "is then dominated by this estimation error rather than by the difference between the sets, and "
            "is comparable only between evaluations with the same numbers of volumes."
        )
    return (
        "FID is biased upwards for finite sets, the more so the fewer the volumes: compare FIDs only at "
        "equal numbers of volumes."
    )


def _feature_distance_summary(m: Metrics) -> str:
    """FID and MMD² in one sentence: they share the feature network that makes them comparable or not."""
    return (
        f"With the feature network “{m['feature_extractor']['label']}”, the FID is {m['fid']:.4g} and the "
        f"MMD² {m['mmd']:.3g}; these numbers mean something only next to other evaluations with the same "
        "feature network, preprocessing and numbers of volumes"
        + (
            ", and with this few volumes the FID is dominated by estimation error."
            if m["fid_covariance_rank_deficient"]
            else "."
        )
    )


def _mmd_note(m: Metrics) -> str:
    return (
        "MMD² uses an RBF kernel whose bandwidth is the median distance between these features, so the "
        "bandwidth depends on the data being compared. The estimator is unbiased and can be slightly "
        "negative when the sets agree. MONAI's MMDMetric (linear kernel, equal-size paired sets) is not "
        "reported: its linear kernel only estimates the squared distance of the feature means, which the "
        "FID already contains."
    )


def _prdc_caveat(m: Metrics) -> str:
    if m["prdc_unavailable"]:
        return f"Unavailable: {m['prdc_unavailable']}."
    n = min(m["n_real"], m["n_synthetic"])
    return f"k = {m['nearest_k']}; with {n} volumes one volume moves it by {1 / n:.0%} or more."


def _prdc_note(m: Metrics) -> str:
    if m["prdc_unavailable"]:
        return f"Precision, recall, density and coverage are unavailable: {m['prdc_unavailable']}."
    n = min(m["n_real"], m["n_synthetic"])
    return (
        f"Precision, recall, density and coverage (k = {m['nearest_k']}) are shares of volumes in "
        f"nearest-neighbour balls; with {n} volumes in the smaller set each one moves them by {1 / n:.0%} "
        "or more."
    )


def _prdc_summary(m: Metrics) -> str:
    if m["precision"] is None:
        return "Precision, recall, density and coverage could not be computed (too few volumes)."
    return (
        f"{m['precision']:.0%} of the synthetic volumes lie among the real ones (precision) and "
        f"{m['recall']:.0%} of the real ones lie among the synthetic ones (recall); "
        f"coverage is {m['coverage']:.0%} and density {m['density']:.2f}."
    )


def _ms_ssim_caveat(m: Metrics) -> str:
    s = m["ms_ssim_settings"]
    return (
        f"{s['num_scales']} scales, kernel {s['kernel_size']} to fit the volume size; "
        "the interval is optimistic (pairs share volumes)."
    )


def _ms_ssim_note(m: Metrics) -> str:
    s = m["ms_ssim_settings"]
    return (
        f"MS-SSIM uses {s['num_scales']} scale{'s' if s['num_scales'] != 1 else ''} and a "
        f"{s['kernel_size']}-voxel Gaussian window chosen to fit the volume size (MONAI's defaults, 5 scales "
        "and 11 voxels, need 176 voxels a side), so its values compare only with evaluations at the same "
        "settings. Its 95% intervals treat pairs as independent although pairs sharing a volume are "
        "correlated, so they are too narrow."
    )


def _diversity_summary(m: Metrics) -> str:
    s, r = m["ms_ssim_synthetic"], m["ms_ssim_real"]
    (s_lo, s_hi), (r_lo, r_hi) = m["ms_ssim_synthetic_ci95"], m["ms_ssim_real_ci95"]
    numbers = f"mean pairwise MS-SSIM {s:.3f} against {r:.3f} for the real ones; lower means more diverse"
    if None not in (s_lo, s_hi, r_lo, r_hi) and s_lo <= r_hi and r_lo <= s_hi:
        return (
            f"The synthetic volumes are about as diverse as the real ones ({numbers}; the intervals overlap)."
        )
    if s > r:
        return (
            f"The synthetic volumes are less diverse than the real ones ({numbers}); "
            "a much higher value is a sign of mode collapse."
        )
    return (
        f"The synthetic volumes differ more from one another than the real ones do ({numbers}); "
        "that can be variety, or noise and artefacts: look at the montages."
    )


def _ms_ssim_interval(name: str) -> Callable[[MetricInputs], list[float | None]]:
    return lambda inputs: [inputs.ms_ssim[name]["ci95_low"], inputs.ms_ssim[name]["ci95_high"]]


def _prdc(key: str, label: str, direction: str, meaning: str, row: int) -> MetricSpec:
    """One of precision, recall, density, coverage: computed together, so caveat and notes are shared."""
    return MetricSpec(
        key=key,
        label=label,
        direction=direction,
        meaning=meaning,
        number_format=".2f",
        value=lambda inputs: inputs.feature_metrics[key],
        caveat=_prdc_caveat,
        row=row,
        note=_prdc_note,
        summary=_prdc_summary if key == "precision" else None,
    )


def _table(*specs: MetricSpec) -> dict[str, MetricSpec]:
    keys = [spec.key for spec in specs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"metric keys given twice: {', '.join(duplicates)}")
    return {spec.key: spec for spec in specs}


LOWER = "↓ lower is better"
HIGHER = "↑ higher is better"

METRICS: dict[str, MetricSpec] = _table(
    MetricSpec(
        key="fid",
        label="FID",
        direction=LOWER,
        meaning="Fréchet distance between Gaussians fitted to the two feature sets.",
        number_format=".4g",
        value=lambda inputs: inputs.feature_metrics["fid"],
        caveat=_fid_caveat,
        row=0,
        note=_fid_note,
        summary=_feature_distance_summary,
    ),
    MetricSpec(
        key="ms_ssim_synthetic",
        label="MS-SSIM within synthetic",
        direction="closer to real is better",
        meaning="Mean structural similarity of pairs of synthetic volumes; lower = more diverse. "
        "Much higher than real suggests mode collapse.",
        number_format=".3f",
        value=lambda inputs: inputs.ms_ssim["synthetic"]["mean"],
        interval=_ms_ssim_interval("synthetic"),
        caveat=_ms_ssim_caveat,
        row=6,
        note=_ms_ssim_note,
        summary=_diversity_summary,
    ),
    MetricSpec(
        key="ms_ssim_real",
        label="MS-SSIM within real",
        direction="reference",
        meaning="The same for pairs of real volumes: the diversity the synthetic set should match.",
        number_format=".3f",
        value=lambda inputs: inputs.ms_ssim["real"]["mean"],
        interval=_ms_ssim_interval("real"),
        caveat=_ms_ssim_caveat,
        row=7,
        note=_ms_ssim_note,
    ),
    MetricSpec(
        key="mmd",
        label="MMD²",
        direction=LOWER,
        meaning="Kernel distance between the feature sets (RBF kernel); about 0 when they match.",
        number_format=".4g",
        value=lambda inputs: inputs.feature_metrics["mmd"],
        caveat="Kernel bandwidth taken from these features (median heuristic); can be slightly negative.",
        row=1,
        note=_mmd_note,
    ),
    _prdc(
        "precision",
        "Precision",
        HIGHER,
        "Share of synthetic volumes that lie among real ones (fidelity).",
        row=2,
    ),
    _prdc(
        "recall",
        "Recall",
        HIGHER,
        "Share of real volumes that lie among synthetic ones (diversity).",
        row=3,
    ),
    _prdc(
        "density",
        "Density",
        "↑ higher is better (≈ 1 when the sets match)",
        "How many real neighbourhoods hold each synthetic volume, over k; "
        "above 1 when samples crowd typical cases.",
        row=4,
    ),
    _prdc("coverage", "Coverage", HIGHER, "Share of real volumes with a synthetic volume close by.", row=5),
)
"""Every reported metric by key, in metrics.json's order."""
