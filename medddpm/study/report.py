"""The reader-study report: report.html (self-contained), report.md and answers.csv, from the analysis.

Both documents are built from the same rows: a summary in plain words, the per-reader table (accuracy
with its Wilson interval and exact binomial p-value, sensitivity, specificity, ROC AUC), the pooled
accuracy with its bootstrap interval, the agreement between readers, the power note, the ratings (rating
task), the correlation of automatic scores with the readers' verdicts, and the protocol's caveats.
One figure: each reader's accuracy with its interval against chance.
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path
from typing import Any

from medddpm.evaluation.report import CSS
from medddpm.preview import pyplot
from medddpm.study.analysis import csv_columns
from medddpm.study.tasks import RATING_SCALES

FIGURE = "reader_accuracy.png"
CAVEATS = [
    "Chance is 50% in the binary task only when readers do not lean to one answer; the two-alternative "
    "task (2afc) fixes chance at 50% whatever they believe about prevalence.",
    "Readers were not told right from wrong during the session; told feedback, they learn the "
    "generator's tells and later answers measure that learning.",
    "Real and synthetic volumes went through one preprocessing and one image writer; a difference the "
    "preprocessing removes (field of view, noise floor, file format) is not tested here.",
    "κ treats the answers as categories; it is low when readers agree only by chance, and also when all "
    "of them guess.",
]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def _interval(ci: list[float | None]) -> str:
    return "–" if ci[0] is None else f"{ci[0]:.1%}–{ci[1]:.1%}"


def summary_text(r: dict[str, Any]) -> str:
    """One paragraph: who answered what, and what the readers could tell."""
    parts = [
        f"{len(r['readers'])} readers gave {r['n_answers']} answers on {r['n_cases']} cases "
        f"({r['task']} task)."
    ]
    p = r.get("pooled")
    if p and p["accuracy"] is not None:
        lo, hi = p["ci95"]
        verdict = (
            "better than chance: the readers can tell synthetic from real volumes"
            if lo > 0.5
            else "not distinguishable from chance: the readers could not reliably tell synthetic from real"
        )
        parts.append(
            f"Pooled accuracy {p['accuracy']:.1%} (95% bootstrap interval {lo:.1%}–{hi:.1%}), {verdict}."
        )
        need = r["power"]["decisions_needed"]
        if need is not None:
            parts.append(
                f"To detect an accuracy of {p['accuracy']:.1%} against 50% (two-sided α 0.05, power 0.8) a "
                f"study needs about {need} decisions; this one has {p['n']}."
            )
    return " ".join(parts)


def reader_rows(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    for reader, x in r.get("per_reader", {}).items():
        rows.append(
            [
                reader,
                f"{x['k']} / {x['n']}",
                _pct(x["accuracy"]),
                _interval(x["ci95"]),
                _num(x["p_value"], ".3g"),
                _pct(x.get("sensitivity")),
                _pct(x.get("specificity")),
                _num(x.get("auc")),
            ]
        )
    return rows


READER_HEADER = [
    "Reader",
    "Correct",
    "Accuracy",
    "95% CI (Wilson)",
    "p (binomial, vs 50%)",
    "Sensitivity",
    "Specificity",
    "ROC AUC",
]


def other_rows(r: dict[str, Any]) -> list[list[str]]:
    """(quantity, value, how to read it) rows: pooled accuracy, agreement, power."""
    rows = []
    if "pooled" in r:
        p = r["pooled"]
        rows.append(
            [
                "pooled accuracy",
                f"{_pct(p['accuracy'])} (95% CI {_interval(p['ci95'])}, bootstrap over readers and cases; "
                f"Wilson {_interval(p['ci95_wilson'])})",
                "50%: chance; an interval above 50%: readers tell synthetic from real",
            ]
        )
        a = r["agreement"]
        rows.append(
            [
                f"agreement ({a['statistic'] or 'κ'})",
                f"{_num(a['kappa'])} on {a['cases']} cases every reader answered",
                "0: chance agreement, 1: perfect; Park et al. 2021 found 0.11",
            ]
        )
        pw = r["power"]
        need = pw["decisions_needed"]
        rows.append(
            [
                "decisions needed",
                "–" if need is None else f"{need} (made: {pw['decisions_made']})",
                "for the observed accuracy to differ from 50% at α 0.05 with power 0.8",
            ]
        )
    for scale, s in r.get("scales", {}).items():
        mw = s["mann_whitney"]
        rows.append(
            [
                f"{scale} (1-4)",
                f"real {_num(s['mean']['real'])}, synthetic {_num(s['mean']['synthetic'])}; Mann-Whitney p = "
                f"{_num(mw['p_value'], '.3g')}; "
                f"{s['agreement']['statistic'] or 'κ'} {_num(s['agreement']['kappa'])}",
                RATING_SCALES[scale],
            ]
        )
    return rows


def metric_rows(r: dict[str, Any]) -> list[list[str]]:
    m = r["metrics"]
    return [
        [name, _num(c["rho"]), _num(c["p_value"], ".3g"), str(c["n"])] for name, c in m["spearman"].items()
    ]


def _figure(r: dict[str, Any], path: Path) -> Path | None:
    per = r.get("per_reader")
    if not per:
        return None
    plt = pyplot()
    names = list(per)
    fig, ax = plt.subplots(figsize=(6.0, 0.5 + 0.4 * len(names)))
    for i, name in enumerate(names):
        x = per[name]
        if x["accuracy"] is None:
            continue
        ax.plot(x["ci95"], [i, i], color="#1f77b4", linewidth=2)
        ax.plot([x["accuracy"]], [i], "o", color="#1f77b4")
    ax.axvline(0.5, color="#444", linestyle="--", linewidth=1, label="chance")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95% Wilson interval)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _html(r: dict[str, Any], figure: Path | None) -> str:
    e = html.escape
    img = ""
    if figure is not None:
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        img = f'<figure><img src="data:image/png;base64,{data}" alt="accuracy per reader"></figure>'
    readers = _table_html(READER_HEADER, reader_rows(r)) if "per_reader" in r else ""
    caveats = "\n".join(f"<li>{e(c)}</li>" for c in CAVEATS)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>medddpm reader study: {e(r["task"])}, {len(r["readers"])} readers</title>
<style>{CSS}</style>
</head>
<body>
<h1>Reader study</h1>
<p class="summary">{e(summary_text(r))}</p>
<h2>Readers</h2>
{readers}
{img}
<h2>Across readers</h2>
{_table_html(["Quantity", "Value", "How to read it"], other_rows(r))}
<h2>Automatic scores against the readers</h2>
<p>Spearman's ρ between each synthetic volume's score and the {e(r["metrics"]["verdict"])}.</p>
{_table_html(["Score", "ρ", "p", "Volumes"], metric_rows(r))}
<h2>Caveats</h2>
<ul class="caveats">
{caveats}
</ul>
<footer>Written by medddpm study analyze. Numbers: analysis.json; every answer: answers.csv.</footer>
</body>
</html>
"""


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows),
    ]


def _markdown(r: dict[str, Any], figure: Path | None) -> str:
    lines = ["# Reader study", "", summary_text(r), ""]
    if "per_reader" in r:
        lines += ["## Readers", "", *_md_table(READER_HEADER, reader_rows(r)), ""]
    if figure is not None:
        lines += [f"![accuracy per reader]({figure.name})", ""]
    lines += ["## Across readers", "", *_md_table(["Quantity", "Value", "How to read it"], other_rows(r)), ""]
    lines += [
        "## Automatic scores against the readers",
        "",
        f"Spearman's ρ between each synthetic volume's score and the {r['metrics']['verdict']}.",
        "",
        *_md_table(["Score", "ρ", "p", "Volumes"], metric_rows(r)),
        "",
        "## Caveats",
        "",
        *(f"- {c}" for c in CAVEATS),
        "",
    ]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], task: str, path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_columns(task)))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in writer.fieldnames})
    return path


def write_report(folder: Path, r: dict[str, Any]) -> dict[str, Path]:
    """report.html, report.md, answers.csv and the figure of analysis ``r`` in ``folder``."""
    folder = Path(folder)
    figure = _figure(r, folder / FIGURE)
    out = {"csv": write_csv(r["rows"], r["task"], folder / "answers.csv")}
    out["html"] = folder / "report.html"
    out["html"].write_text(_html(r, figure), encoding="utf-8")
    out["markdown"] = folder / "report.md"
    out["markdown"].write_text(_markdown(r, figure), encoding="utf-8")
    if figure is not None:
        out["figure"] = figure
    return out
