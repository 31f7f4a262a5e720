"""The audit report a person reads: report.html, self-contained (base64 PNG, its own CSS), and its figures.

Figures: the nearest-training correlations of held-out and synthetic volumes with the threshold, the
nearest / second-nearest gaps, and mid-slice montages of the synthetic volumes closest to a training
scan, each beside that scan (mirrored when it matched mirrored). Text: the verdict, the numbers with
their intervals, the closest pairs, the caveats and the settings, all read from audit.json's content.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medddpm.evaluation.report import CSS as EVALUATION_CSS
from medddpm.preview import pyplot, save_montage, short_name

if TYPE_CHECKING:
    from medddpm.audit.measure import AuditMeasurement

TOP_PAIRS = 4
"""Synthetic volumes shown beside their nearest training scan: the closest ones."""
TABLE_ROWS = 20
"""Closest pairs listed in the report (audit.json lists all)."""
COLOURS = {"heldout": "#1f77b4", "synthetic": "#d95f02"}
FIGURES = {
    "correlations": "nearest_correlations.png",
    "gaps": "nearest_gaps.png",
    "top_pairs": "top_pairs.png",
}
CAPTIONS = {
    "correlations": "Correlation of each volume with its nearest training scan, inside the foreground. The "
    "dashed line is the threshold (a quantile of the held-out scans); synthetic volumes right of it are "
    "flagged. A synthetic curve on top of the held-out one is what a model that does not copy gives.",
    "gaps": "Nearest minus second-nearest correlation. A copy of one training scan sits far closer to it "
    "than to any other: a large gap.",
    "top_pairs": "The synthetic volumes closest to a training scan (left of each pair) and that scan "
    "(right): axial, coronal and sagittal mid-slices, grey scale 0–1.",
}
CSS = (
    EVALUATION_CSS
    + """
.verdict { padding: 0.8rem 1rem; margin: 1rem 0; border-left: 5px solid #3a8f3a; background: #eef6ee; }
.verdict.memorisation { border-left-color: #c0392b; background: #fdecea; }
.verdict.closer { border-left-color: #e8890c; background: #fff4e5; }
.verdict strong { font-size: 1.2rem; display: block; }
tr.flagged td { background: #fdecea; }
"""
)


def _distributions(m: AuditMeasurement, attribute: str, xlabel: str, path: Path, threshold=None) -> Path:
    plt = pyplot()
    values = {name: getattr(m.neighbours[name], attribute) for name in ("heldout", "synthetic")}
    everything = np.concatenate(list(values.values()))
    lo, hi = float(everything.min()), float(everything.max())
    edges = np.linspace(lo - 1e-6, hi + 1e-6, 41)
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    for name, v in values.items():
        counts, _ = np.histogram(v, bins=edges, density=True)
        label = "held-out" if name == "heldout" else name
        ax.stairs(counts, edges, fill=True, alpha=0.25, color=COLOURS[name])
        ax.stairs(counts, edges, color=COLOURS[name], linewidth=1.5, label=f"{label} (n = {len(v)})")
    if threshold is not None:
        ax.axvline(threshold, color="#444", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def top_pairs(m: AuditMeasurement, k: int = TOP_PAIRS) -> list[int]:
    """Indices of the ``k`` synthetic volumes of highest nearest-training correlation, closest first."""
    return [int(i) for i in np.argsort(-m.neighbours["synthetic"].similarity, kind="stable")[:k]]


def _top_pairs_montage(m: AuditMeasurement, path: Path) -> Path:
    synth, training, nb = m.sets["synthetic"], m.sets["training"], m.neighbours["synthetic"]
    volumes, titles = [], []
    for q in top_pairs(m):
        t = int(nb.index[q])
        partner = training.volumes[t, 0].numpy()
        volumes += [synth.volumes[q, 0].numpy(), partner[::-1].copy() if nb.mirrored[q] else partner]
        titles += [
            f"{short_name(synth.files[q].name, 20)} r={nb.similarity[q]:.3f}",
            f"{short_name(training.files[t].name, 20)}{' (mirrored)' if nb.mirrored[q] else ''}",
        ]
    return save_montage(
        volumes,
        path,
        spacing=training.spacing,
        titles=titles,
        value_range=(0.0, 1.0),
        suptitle="Closest synthetic volumes (odd rows) and their nearest training scans",
    )


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def headline_numbers(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(quantity, value, how to read it) rows of the report's main table, from audit.json's content."""
    lo, hi = r["flagged_share_ci95"]
    mw = r["mann_whitney"]
    s, h = r["summary"]["synthetic"], r["summary"]["heldout"]
    rows = [
        (
            "flagged synthetic volumes",
            f"{r['n_flagged']} of {r['n_synthetic']} ({r['flagged_share']:.1%}, 95% CI {lo:.1%}–{hi:.1%}, "
            f"{r['interval']})",
            f"about {r['expected_share']:.1%} expected without copying; more than that by chance: "
            f"p = {r['exceedance_p_value']:.3g} (exact, the threshold's own uncertainty included)",
        ),
        ("threshold (correlation)", _fmt(r["threshold"]), f"{r['quantile']:g} quantile of held-out scans"),
        (
            "median nearest correlation",
            f"synthetic {_fmt(s['correlation']['median'])}, held-out {_fmt(h['correlation']['median'])}",
            "synthetic far above held-out: closer to training than new scans come; far below: "
            "not yet like the training scans at all",
        ),
        (
            "Mann-Whitney (synthetic closer)",
            f"p = {mw['p_value']:.3g}, P(closer) = {mw['probability_closer']:.2f}",
            "P(closer) 0.5: no difference; 1: every synthetic closer than every held-out",
        ),
        (
            "median nearest / second gap",
            f"synthetic {_fmt(s['gap']['median'])}, held-out {_fmt(h['gap']['median'])}",
            "large: a volume is close to one training scan only",
        ),
        (
            "median SSIM with nearest",
            f"synthetic {_fmt(s['ssim']['median'])}, held-out {_fmt(h['ssim']['median'])}",
            "1 = identical",
        ),
        (
            "authenticity (Alaa et al. 2022)",
            f"{r['authenticity']['score']:.2f} ({r['authenticity']['n_unauthentic']} unauthentic); "
            f"held-out {r['authenticity']['heldout_score']:.2f}",
            "share of volumes farther from their nearest training scan than that scan's own nearest "
            "neighbour is; compare with the held-out score",
        ),
        (
            "closer than every held-out scan",
            str(r["closer_than_every_heldout"]),
            "synthetic volumes beyond the closest held-out scan",
        ),
    ]
    m = r.get("membership")
    if m is None:
        rows.append(("membership AUC (denoising loss)", "not measured", "pass --run to measure it"))
    else:
        lo, hi = m["auc_ci95"]
        rows.append(
            (
                "membership AUC (denoising loss)",
                f"{m['auc']:.2f} (95% CI {lo:.2f}–{hi:.2f}; {m['n_train']} training, {m['n_heldout']} "
                f"held-out scans)",
                "0.5: no signal; well above 0.5: the model fits its training scans better than unseen ones",
            )
        )
    if "feature_cosine" in s:
        rows.append(
            (
                "median feature cosine with nearest",
                f"synthetic {_fmt(s['feature_cosine']['median'])}, "
                f"held-out {_fmt(h['feature_cosine']['median'])}",
                "nearest by feature cosine; see the caveat on the feature network",
            )
        )
    return rows


def _html(r: dict[str, Any], images: dict[str, Path]) -> str:
    e = html.escape

    def img(key: str) -> str:
        data = base64.b64encode(images[key].read_bytes()).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{e(CAPTIONS[key])}">'
            f"<figcaption>{e(CAPTIONS[key])}</figcaption></figure>"
        )

    numbers = "\n".join(
        f"<tr><td>{e(a)}</td><td class='value'>{e(b)}</td><td class='meaning'>{e(c)}</td></tr>"
        for a, b, c in headline_numbers(r)
    )
    closest = sorted(r["pairs"]["synthetic"], key=lambda p: -p["correlation"])[:TABLE_ROWS]
    pairs = "\n".join(
        f"<tr{' class=flagged' if p['flagged'] else ''}><td>{e(p['file'])}</td>"
        f"<td>{e(p['nearest_training'])}{' (mirrored)' if p['mirrored'] else ''}</td>"
        f"<td class='value'>{p['correlation']:.3f}</td><td class='value'>{p['gap']:.3f}</td>"
        f"<td class='value'>{p['ssim']:.3f}</td><td>{'yes' if p['flagged'] else ''}</td></tr>"
        for p in closest
    )
    caveats = "\n".join(f"<li>{e(c)}</li>" for c in r["caveats"])
    sim = r["similarity"]
    settings = {
        "similarity": sim["measure"],
        "foreground mask": f"{sim['mask']['rule']}: {sim['mask']['share']:.0%} of voxels",
        "mirror images compared": "yes" if r["similarity"]["mirrored"] else "no",
        "SSIM": f"{sim['ssim']['implementation']}, kernel {sim['ssim']['kernel_size']}",
        "feature network": "none" if r["feature_extractor"] is None else r["feature_extractor"]["label"],
        "preprocessing": r["preprocessing"]["description"],
        "volumes (training / held-out / synthetic)": " / ".join(
            str(r[k]) for k in ("n_training", "n_heldout", "n_synthetic")
        ),
    }
    settings_rows = "\n".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in settings.items())
    shape = "×".join(str(s) for s in r["inputs"]["volume_shape"])
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>medddpm audit: {e(r["headline"])}</title>
<style>{CSS}</style>
</head>
<body>
<h1>Memorisation audit</h1>
<p class="subtitle">medddpm {e(r["version"]["medddpm"])} audit, {e(r["created"])}:
{r["n_synthetic"]} synthetic and {r["n_heldout"]} held-out volumes against {r["n_training"]} training volumes
at {shape} voxels</p>
<div class="verdict {e(r["verdict"])}"><strong>{e(r["headline"])}</strong>{e(r["advice"])}</div>
<p class="subtitle">Rule: {e(r["rule"])}.</p>

<h2>Numbers</h2>
<table>
<tr><th>Quantity</th><th>Value</th><th>How to read it</th></tr>
{numbers}
</table>

<h2>Nearest training scans</h2>
<div class="figures single">{img("correlations")}</div>
<div class="figures single">{img("gaps")}</div>

<h2>Closest pairs</h2>
<div class="figures single">{img("top_pairs")}</div>
<table>
<tr><th>Synthetic</th><th>Nearest training</th><th>Correlation</th><th>Gap</th><th>SSIM</th>
<th>Flagged</th></tr>
{pairs}
</table>
<p class="subtitle">The {len(closest)} closest of {r["n_synthetic"]}; audit.json lists every volume.</p>

<h2>Caveats</h2>
<ul class="caveats">
{caveats}
</ul>

<h2>Settings</h2>
<table class="settings">
{settings_rows}
</table>
<footer>Written by medddpm audit. Numbers: audit.json.</footer>
</body>
</html>
"""


def write_report(folder: Path, measurement: AuditMeasurement) -> dict[str, Path]:
    """Figures (PNG) and report.html of ``measurement`` in ``folder``; returns their paths by name."""
    folder = Path(folder)
    r = measurement.result
    json.dumps(r, allow_nan=False)  # a report is only written for numbers audit.json can hold
    images = {
        "correlations": _distributions(
            measurement,
            "similarity",
            "correlation with the nearest training scan",
            folder / FIGURES["correlations"],
            threshold=r["threshold"],
        ),
        "gaps": _distributions(
            measurement, "gap", "nearest minus second-nearest correlation", folder / FIGURES["gaps"]
        ),
        "top_pairs": _top_pairs_montage(measurement, folder / FIGURES["top_pairs"]),
    }
    out = dict(images)
    out["html"] = folder / "report.html"
    out["html"].write_text(_html(r, images), encoding="utf-8")
    return out
