"""The evaluation report a person reads: report.html (self-contained), report.md and a console table.

write_report draws four figures (mid-slice montages of each set, intensity histograms, MS-SSIM
distributions) as PNG files and writes two documents from the same parts: a one-paragraph summary
in plain words, a metrics table with the direction of each metric, the figures, the caveats and
the settings. report.html embeds its images as base64 PNG and carries its own CSS (no network
access to open it); report.md links the PNG files beside it.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medddpm.evaluation.specs import METRICS, table_rows
from medddpm.preview import pyplot, save_montage, short_name

if TYPE_CHECKING:
    from rich.table import Table

    from medddpm.evaluation.measure import Measurement, VolumeSet

MONTAGE_ROWS = 4
"""Volumes shown per set in the montages (the first ones in file order)."""
HISTOGRAM_BINS = 64
COLOURS = {"real": "#1f77b4", "synthetic": "#d95f02"}
FIGURES = {
    "montage_real": "montage_real.png",
    "montage_synthetic": "montage_synthetic.png",
    "histograms": "intensity_histograms.png",
    "ms_ssim": "ms_ssim_distributions.png",
}
RECONSTRUCTION_FIGURE = "montage_reconstruction.png"
"""Drawn only for a latent run: its autoencoder's reconstructions of the real set (the ceiling)."""


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------


def summary_text(m: dict[str, Any]) -> str:
    """One paragraph in plain words: what was compared, with what, and what the numbers say."""
    shape = "×".join(str(s) for s in m["inputs"]["volume_shape"])
    parts = [
        f"{m['n_synthetic']} synthetic volumes were compared with {m['n_real']} real volumes "
        f"at {shape} voxels, both preprocessed the same way."
    ]
    for spec in METRICS.values():
        sentence = spec.summary(m) if spec.summary is not None else None
        if sentence:
            parts.append(sentence)
    if m.get("autoencoder_ceiling") is not None:
        parts.append(m["autoencoder_ceiling"]["summary"])
    return " ".join(parts)


def ceiling_rows(m: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """A latent run's autoencoder ceiling beside the synthetic set: (metric, synthetic vs real,
    reconstruction vs real, direction) for each metric both have; [] without a ceiling."""
    c = m.get("autoencoder_ceiling")
    if c is None:
        return []
    rows = [(s.label, s.format(m), s.format(c), s.direction) for s in table_rows() if s.key in c]
    r = c["reconstruction"]
    paired = ", ".join(
        f"{name} {r[key]:.4g}" if r[key] is not None else f"{name} unavailable"
        for name, key in (("PSNR", "psnr"), ("SSIM", "ssim"), ("MAE", "mae"), ("r", "correlation"))
    )
    rows.append(("Reconstruction vs its scan", "", paired, "per scan, mean"))
    return rows


def summary_table(metrics: dict[str, Any]) -> Table:
    """The metrics with their directions, for the console (rich)."""
    from rich.table import Table

    table = Table(title=f"Evaluation: {metrics['n_synthetic']} synthetic vs {metrics['n_real']} real volumes")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("direction")
    for spec in table_rows():
        table.add_row(spec.label, spec.format(metrics), spec.direction)
    table.caption = f"features: {metrics['feature_extractor']['label']}"
    return table


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _montage(volume_set: VolumeSet, path: Path) -> Path:
    shown = volume_set.volumes[:MONTAGE_ROWS, 0].numpy()
    names = [short_name(p.name) for p in volume_set.files[:MONTAGE_ROWS]]
    return save_montage(
        list(shown),
        path,
        spacing=volume_set.spacing,
        titles=names,
        value_range=(0.0, 1.0),
        suptitle=f"{volume_set.name.capitalize()}: first {len(names)} of {len(volume_set.files)}",
    )


def _legend_on_top(ax) -> None:
    """The legend in one row between title and axes, where it cannot hide data."""
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=9)


def _histograms(real: VolumeSet, synth: VolumeSet, path: Path) -> Path:
    plt = pyplot()
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    for volume_set in (real, synth):
        counts, _ = np.histogram(volume_set.volumes.numpy(), bins=edges, density=True)
        colour = COLOURS[volume_set.name]
        ax.stairs(counts, edges, fill=True, alpha=0.25, color=colour)
        ax.stairs(
            counts,
            edges,
            color=colour,
            linewidth=1.5,
            label=f"{volume_set.name} (n = {len(volume_set.files)})",
        )
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("intensity after preprocessing (0 = lower percentile / window, 1 = upper)")
    ax.set_ylabel("density (log scale)")
    ax.set_title("Voxel intensities, all volumes", fontsize=10, pad=24)
    _legend_on_top(ax)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ms_ssim_plot(values: dict[str, Sequence[float]], metrics: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    everything = np.concatenate([np.asarray(v, dtype=float) for v in values.values()])
    lo, hi = float(everything.min()), float(everything.max())
    pad = max(0.01, 0.05 * (hi - lo))
    n_bins = int(np.clip(2 * np.sqrt(max(len(v) for v in values.values())), 8, 40))
    edges = np.linspace(lo - pad, hi + pad, n_bins + 1)
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    for name in ("real", "synthetic"):
        v = np.asarray(values[name], dtype=float)
        colour = COLOURS[name]
        counts, _ = np.histogram(v, bins=edges, density=True)
        ax.stairs(counts, edges, fill=True, alpha=0.25, color=colour)
        ax.stairs(
            counts, edges, color=colour, linewidth=1.5, label=f"{name}: mean {v.mean():.3f} ({len(v)} pairs)"
        )
        ax.axvline(v.mean(), color=colour, linestyle="--", linewidth=1.2)
    ax.set_xlabel("MS-SSIM of a pair of volumes (lower = more different)")
    ax.set_ylabel("density")
    s = metrics["ms_ssim_settings"]
    ax.set_title(
        f"Pairwise MS-SSIM within each set ({s['num_scales']} scales, kernel {s['kernel_size']})",
        fontsize=10,
        pad=24,
    )
    _legend_on_top(ax)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------------------


def _settings(m: dict[str, Any]) -> list[tuple[str, str]]:
    fe, s, inputs = m["feature_extractor"], m["ms_ssim_settings"], m["inputs"]
    return [
        ("Real scans", f"{inputs['real_dir']} ({m['n_real']} files)"),
        ("Synthetic scans", f"{inputs['synthetic_dir']} ({m['n_synthetic']} files)"),
        ("Run", inputs["run"] or "none (default preprocessing)"),
        ("Preprocessing", m["preprocessing"]["description"]),
        (
            "Voxel size (mm, median)",
            f"real {_mm(inputs['voxel_size_mm']['real'])}, "
            f"synthetic {_mm(inputs['voxel_size_mm']['synthetic'])}",
        ),
        ("Feature network", f"{fe['label']}; {fe['implementation']}; {fe['feature_dim']} features"),
        ("Weights sha256", fe["weights_sha256"]),
        (
            "MS-SSIM",
            f"{s['num_scales']} scales, Gaussian kernel {s['kernel_size']} (σ {s['kernel_sigma']}), "
            "data range "
            f"{s['data_range']:g}, up to {s['max_pairs']} pairs per set (seed {s['seed']}); pairs used: "
            f"real {m['ms_ssim_pairs']['real']}, synthetic {m['ms_ssim_pairs']['synthetic']}",
        ),
        (
            "MMD²",
            f"{m['mmd_settings']['estimator']}, "
            f"RBF bandwidth {m['mmd_settings']['bandwidth']:.4g} (median heuristic)",
        ),
        ("PRDC", f"k = {m['nearest_k']} (Naeem et al. 2020)"),
        ("Created", m["created"]),
        ("Versions", ", ".join(f"{k} {v}" for k, v in m["version"].items() if k != "platform")),
    ]


def _mm(values: Sequence[float]) -> str:
    return " × ".join(f"{v:.3g}" for v in values)


# --------------------------------------------------------------------------------------------------
# Conditions: the condition check and the metrics per stratum (metrics.json's "conditions")
# --------------------------------------------------------------------------------------------------

CONDITIONS_INTRO = (
    "For each variable, a simple model learns it from the real volumes' features; its cross-validated "
    "score there is what a perfectly obeyed condition would reach. It then predicts each synthetic "
    "volume's variable, scored against what the sample was asked for: a condition the model ignores "
    "scores near chance."
)


def _score(entry: dict[str, Any], side: str) -> str:
    score = entry[side]
    if score is None:
        return "–"
    if entry["kind"] == "categorical":
        auc = "" if score.get("auc") is None else f", AUC {score['auc']:.2f}"
        return f"accuracy {score['accuracy']:.0%} (chance {score['chance']:.0%}){auc}"
    r = "undefined" if score["r"] is None else f"{score['r']:.2f}"
    return f"r = {r}, MAE {score['mae']:.3g}"


def _number(value: Any, fmt: str = "{:.3g}") -> str:
    return "–" if value is None else fmt.format(value)


def condition_rows(m: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The condition check as rows: variable, real (cross-validated), synthetic, reading."""
    return [
        (f"{e['variable']} ({e['kind']})", _score(e, "real_cv"), _score(e, "synthetic"), e["reading"])
        for e in m["conditions"]["check"]
    ]


def stratum_rows(m: dict[str, Any]) -> list[tuple[str, ...]]:
    """The metrics per stratum as rows: stratum, volumes real / synthetic, FID, MMD², precision, recall."""
    rows = []
    for s in m["conditions"]["strata"]:
        values = (
            [_number(s["fid"], "{:.4g}"), _number(s["mmd"], "{:.4f}")]
            + [_number(s[k], "{:.2f}") for k in ("precision", "recall")]
            if s["skipped"] is None
            else ["not measured: " + s["skipped"], "", "", ""]
        )
        rows.append((f"{s['variable']} = {s['category']}", f"{s['n_real']} / {s['n_synthetic']}", *values))
    return rows


STRATUM_HEADER = ("Stratum", "Volumes real / synthetic", "FID ↓", "MMD² ↓", "Precision ↑", "Recall ↑")
CHECK_HEADER = ("Variable", "Real volumes (cross-validated)", "Synthetic volumes (vs request)", "Reading")


def _conditions_source(m: dict[str, Any]) -> str:
    c = m["conditions"]
    return (
        f"Real volumes' conditions from {Path(c['real_table']).name}; synthetic volumes' from their "
        f"{c['synthetic_source']}. Strata are the categories of categorical variables, measured when each "
        f"set holds at least {c['min_stratum_volumes']} volumes of it."
    )


def _conditions_html(m: dict[str, Any]) -> str:
    if not m.get("conditions"):
        return ""
    e = html.escape

    def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        cell = "<td>{}</td>"
        body = "\n".join("<tr>" + "".join(cell.format(e(c)) for c in r) + "</tr>" for r in rows)
        return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"

    sentences = "\n".join(f"<p>{e(c['sentence'])}</p>" for c in m["conditions"]["check"])
    return f"""
<h2>Conditions</h2>
<p class="subtitle">{e(_conditions_source(m))}</p>
<h3>Condition check</h3>
<p>{e(CONDITIONS_INTRO)}</p>
{table(CHECK_HEADER, condition_rows(m))}
{sentences}
<h3>Metrics per stratum</h3>
{table(STRATUM_HEADER, stratum_rows(m))}
"""


def _conditions_markdown(m: dict[str, Any]) -> list[str]:
    if not m.get("conditions"):
        return []

    def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
        return [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows),
        ]

    return [
        "## Conditions",
        "",
        _conditions_source(m),
        "",
        "### Condition check",
        "",
        CONDITIONS_INTRO,
        "",
        *table(CHECK_HEADER, condition_rows(m)),
        "",
        *(x for c in m["conditions"]["check"] for x in (c["sentence"], "")),
        "### Metrics per stratum",
        "",
        *table(STRATUM_HEADER, stratum_rows(m)),
        "",
    ]


CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif; color: #1d2330;
       max-width: 1080px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.5; background: #fff; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #e3e6ec; padding-bottom: 0.3rem; }
.subtitle { color: #5b6475; margin-top: 0; }
.label { background: #fff4e5; border-left: 4px solid #e8890c; padding: 0.6rem 0.9rem; margin: 1rem 0; }
.label.ok { background: #eef6ee; border-left-color: #3a8f3a; }
.summary { font-size: 1.05rem; }
table { border-collapse: collapse; width: 100%; margin: 0.8rem 0; font-size: 0.95rem; }
th, td { text-align: left; padding: 0.45rem 0.6rem; border-bottom: 1px solid #e3e6ec; vertical-align: top; }
th { background: #f5f7fa; font-weight: 600; }
td.value { font-variant-numeric: tabular-nums; white-space: nowrap; font-weight: 600; }
td.direction { white-space: nowrap; color: #34405a; }
td.meaning { color: #5b6475; }
.caveat { display: block; color: #9a5a00; font-size: 0.85rem; margin-top: 0.2rem; }
.figures { display: flex; gap: 1rem; flex-wrap: wrap; }
.figures figure { flex: 1 1 460px; margin: 0; }
.figures.single { justify-content: center; }
.figures.single figure { flex: 0 1 760px; }
figure img { width: 100%; border: 1px solid #e3e6ec; border-radius: 4px; }
figcaption { color: #5b6475; font-size: 0.9rem; margin-top: 0.3rem; }
.caveats li { margin-bottom: 0.5rem; }
.settings td:first-child { white-space: nowrap; font-weight: 600; width: 14rem; }
footer { color: #8a93a6; font-size: 0.85rem; margin: 3rem 0 1rem; }
"""

CAPTIONS = {
    "montage_real": "Real volumes after preprocessing: axial, coronal and sagittal mid-slices "
    "(grey scale 0–1).",
    "montage_synthetic": "Synthetic volumes after the same preprocessing, on the same grey scale.",
    "histograms": "Voxel intensities of each set after preprocessing. Shapes should agree; a shifted or "
    "narrower synthetic curve means intensities the model did not learn.",
    "ms_ssim": "MS-SSIM of pairs within each set (dashed: means). The synthetic distribution should sit "
    "where the real one does; far to the right means samples that look alike.",
    "montage_reconstruction": "The first real volumes encoded and decoded by the run's autoencoder, after "
    "the same preprocessing: the best any diffusion model in its latent space can draw.",
}


def _label_box(m: dict[str, Any]) -> tuple[str, bool]:
    fe = m["feature_extractor"]
    random_init = fe["weights_sha256"].startswith("random-init")
    if random_init:
        return f"Feature network: {fe['label']}.", False
    return f"Feature network: {fe['label']}, sha256 {fe['weights_sha256']}.", True


def _html(m: dict[str, Any], images: dict[str, Path]) -> str:
    e = html.escape

    def img(key: str) -> str:
        data = base64.b64encode(images[key].read_bytes()).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{e(CAPTIONS[key])}">'
            f"<figcaption>{e(CAPTIONS[key])}</figcaption></figure>"
        )

    label, ok = _label_box(m)
    shape = "×".join(str(s) for s in m["inputs"]["volume_shape"])
    rows = "\n".join(
        f"<tr><td>{e(spec.label)}</td><td class='value'>{e(spec.format(m))}</td>"
        f"<td class='direction'>{e(spec.direction)}</td><td class='meaning'>{e(spec.meaning)}"
        f"<span class='caveat'>{e(spec.caveat_for(m))}</span></td></tr>"
        for spec in table_rows()
    )
    caveats = "\n".join(f"<li>{e(c)}</li>" for c in m["caveats"])
    ceiling = ""
    if m.get("autoencoder_ceiling") is not None:
        ceiling_table = "\n".join(
            f"<tr><td>{e(a)}</td><td class='value'>{e(b)}</td><td class='value'>{e(c)}</td>"
            f"<td class='direction'>{e(d)}</td></tr>"
            for a, b, c, d in ceiling_rows(m)
        )
        ceiling = f"""
<h2>Autoencoder ceiling</h2>
<p class="summary">{e(m["autoencoder_ceiling"]["summary"])}</p>
<table>
<tr><th>Metric</th><th>Synthetic vs real</th><th>Reconstruction vs real</th><th>Direction</th></tr>
{ceiling_table}
</table>
<div class="figures single">{img("montage_reconstruction")}</div>
"""
    settings = "\n".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in _settings(m))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>medddpm evaluation: {m["n_synthetic"]} synthetic vs {m["n_real"]} real</title>
<style>{CSS}</style>
</head>
<body>
<h1>Synthetic vs real volumes</h1>
<p class="subtitle">medddpm {e(m["version"]["medddpm"])} evaluation, {e(m["created"])}:
{m["n_synthetic"]} synthetic and {m["n_real"]} real volumes at {shape} voxels</p>
<div class="label{" ok" if ok else ""}">{e(label)}</div>

<h2>Summary</h2>
<p class="summary">{e(summary_text(m))}</p>

<h2>Metrics</h2>
<table>
<tr><th>Metric</th><th>Value</th><th>Direction</th><th>What it says, and its caveat</th></tr>
{rows}
</table>
<p class="subtitle">Read each number with the caveats below; metrics.json beside this file has them all.</p>
{_conditions_html(m)}

{ceiling}
<h2>Volumes</h2>
<div class="figures">
{img("montage_real")}
{img("montage_synthetic")}
</div>

<h2>Intensities</h2>
<div class="figures single">{img("histograms")}</div>

<h2>Diversity</h2>
<div class="figures single">{img("ms_ssim")}</div>

<h2>Caveats</h2>
<ul class="caveats">
{caveats}
</ul>

<h2>Settings</h2>
<table class="settings">
{settings}
</table>
<footer>Written by medddpm evaluate. Numbers: metrics.json.</footer>
</body>
</html>
"""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ceiling_markdown(m: dict[str, Any]) -> list[str]:
    if m.get("autoencoder_ceiling") is None:
        return []
    return [
        "## Autoencoder ceiling",
        "",
        m["autoencoder_ceiling"]["summary"],
        "",
        "| Metric | Synthetic vs real | Reconstruction vs real | Direction |",
        "|---|---|---|---|",
        *(f"| {a} | {_md_cell(b)} | {_md_cell(c)} | {d} |" for a, b, c, d in ceiling_rows(m)),
        "",
        f"![reconstructions]({RECONSTRUCTION_FIGURE})",
        "",
        CAPTIONS["montage_reconstruction"],
        "",
    ]


def _markdown(m: dict[str, Any], images: dict[str, Path]) -> str:
    label, _ = _label_box(m)
    shape = "×".join(str(s) for s in m["inputs"]["volume_shape"])
    lines = [
        "# Synthetic vs real volumes",
        "",
        f"medddpm {m['version']['medddpm']} evaluation, {m['created']}: {m['n_synthetic']} synthetic and "
        f"{m['n_real']} real volumes at {shape} voxels.",
        "",
        f"> **{label}**",
        "",
        "## Summary",
        "",
        summary_text(m),
        "",
        "## Metrics",
        "",
        "| Metric | Value | Direction | What it says, and *its caveat* |",
        "|---|---|---|---|",
        *(
            f"| {spec.label} | {_md_cell(spec.format(m))} | {spec.direction} | "
            f"{_md_cell(spec.meaning)} *{_md_cell(spec.caveat_for(m))}* |"
            for spec in table_rows()
        ),
        "",
        *_conditions_markdown(m),
        *_ceiling_markdown(m),
        "## Volumes",
        "",
        "| Real | Synthetic |",
        "|---|---|",
        f"| ![real]({images['montage_real'].name}) | ![synthetic]({images['montage_synthetic'].name}) |",
        "",
        CAPTIONS["montage_real"] + " " + CAPTIONS["montage_synthetic"],
        "",
        "## Intensities",
        "",
        f"![intensity histograms]({images['histograms'].name})",
        "",
        CAPTIONS["histograms"],
        "",
        "## Diversity",
        "",
        f"![MS-SSIM distributions]({images['ms_ssim'].name})",
        "",
        CAPTIONS["ms_ssim"],
        "",
        "## Caveats",
        "",
        *(f"- {c}" for c in m["caveats"]),
        "",
        "## Settings",
        "",
        "| Setting | Value |",
        "|---|---|",
        *(f"| {k} | {_md_cell(v)} |" for k, v in _settings(m)),
        "",
    ]
    return "\n".join(lines)


def write_report(folder: Path, measurement: Measurement) -> dict[str, Path]:
    """Figures (PNG), report.html and report.md of ``measurement`` in ``folder``; returns their paths by name.

    The documents' text comes from ``measurement.metrics`` (metrics.json's content) alone; the figures
    draw the preprocessed sets and the MS-SSIM pair values.
    """
    folder = Path(folder)
    metrics = measurement.metrics
    json.dumps(metrics, allow_nan=False)  # a report is only written for numbers metrics.json can hold
    real, synth = measurement.real, measurement.synthetic
    images = {
        "montage_real": _montage(real, folder / FIGURES["montage_real"]),
        "montage_synthetic": _montage(synth, folder / FIGURES["montage_synthetic"]),
        "histograms": _histograms(real, synth, folder / FIGURES["histograms"]),
        "ms_ssim": _ms_ssim_plot(measurement.ms_ssim_values, metrics, folder / FIGURES["ms_ssim"]),
    }
    if measurement.reconstructions is not None:  # a latent run: its autoencoder's reconstructions
        path = folder / RECONSTRUCTION_FIGURE
        images["montage_reconstruction"] = _montage(measurement.reconstructions, path)
    out = dict(images)
    out["html"] = folder / "report.html"
    out["html"].write_text(_html(metrics, images), encoding="utf-8")
    out["markdown"] = folder / "report.md"
    out["markdown"].write_text(_markdown(metrics, images), encoding="utf-8")
    return out
