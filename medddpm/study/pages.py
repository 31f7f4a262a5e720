"""A reader's folder: blinded PNG slice stacks and one self-contained, offline page (index.html).

Blinding. Whatever a file could tell about where a volume came from is made the same for every
volume, real or synthetic:

- names: each volume is a random id (``volume_ids``, seeded), its images ``img/ID-axial.png`` ...;
- sizes: PNGs are stored uncompressed (zlib level 0), so a file's size depends on the volume's
  shape only (a compressed PNG's size measures the image's noise, which differs between sources);
- metadata: the PNG holds IHDR, IDAT and IEND only (no text, time, gamma or resolution chunk), and
  every file and folder gets the same modification time (``same_times``);
- intensities: every volume went through one preprocessing (medddpm.study.build) to [0, 1], then one
  fixed grey scale here (0 -> black, 1 -> white): the window is the modality's, never the volume's;
- order: each reader sees the cases in an order drawn from the seed and the reader's number only.

A slice stack is one PNG per view: the view's slices one below the other, each oriented for display
as medddpm.preview.mid_slices orients them (superior / anterior up). The page shows a stack through a
window one slice high and moves it with a slider, the mouse wheel or the arrow keys.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

VIEWS = ("axial", "coronal", "sagittal")
PANEL_PIXELS = 256
"""Longest side of a view on the page, in CSS pixels (the browser scales the slice to it)."""


def volume_ids(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct random ids of 10 hex digits: names that say nothing about the volume."""
    ids: set[str] = set()
    out = []
    while len(out) < n:
        new = "".join(rng.choice(list("0123456789abcdef"), 10))
        if new not in ids:
            ids.add(new)
            out.append(new)
    return out


def slice_stacks(volume: np.ndarray) -> dict[str, np.ndarray]:
    """A RAS volume [X, Y, Z] -> per view, its slices [n, rows, columns], oriented for display."""
    v = np.asarray(volume)
    return {
        "axial": np.stack([v[:, :, k].T[::-1] for k in range(v.shape[2])]),
        "coronal": np.stack([v[:, k, :].T[::-1] for k in range(v.shape[1])]),
        "sagittal": np.stack([v[k, :, :].T[::-1] for k in range(v.shape[0])]),
    }


def grey(volume: np.ndarray) -> np.ndarray:
    """Intensities on [0, 1] -> uint8 grey levels (fixed window: 0 black, 1 white; outside clipped)."""
    return np.rint(np.clip(np.asarray(volume, np.float64), 0.0, 1.0) * 255).astype(np.uint8)


def write_png(image: np.ndarray, path: Path) -> Path:
    """An 8-bit grey PNG, uncompressed and without ancillary chunks (see the module docstring)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image), mode="L").save(path, format="PNG", compress_level=0)
    return path


def write_stacks(volume: np.ndarray, volume_id: str, folder: Path) -> None:
    """The three slice stacks of a volume on [0, 1] as folder/ID-VIEW.png."""
    for view, stack in slice_stacks(grey(volume)).items():
        write_png(stack.reshape(-1, stack.shape[2]), folder / f"{volume_id}-{view}.png")


def view_geometry(shape: Sequence[int], spacing: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Per view: slices, rows and columns of a slice, its size on the page (in proportion to mm)."""
    (x, y, z), (sx, sy, sz) = shape, spacing
    dims = {
        "axial": (z, y, x, y * sy, x * sx),
        "coronal": (y, z, x, z * sz, x * sx),
        "sagittal": (x, z, y, z * sz, y * sy),
    }
    out = {}
    for view, (n, rows, cols, height_mm, width_mm) in dims.items():
        scale = PANEL_PIXELS / max(height_mm, width_mm)
        out[view] = {
            "slices": int(n),
            "rows": int(rows),
            "columns": int(cols),
            "height": round(height_mm * scale),
            "width": round(width_mm * scale),
        }
    return out


def same_times(folder: Path, timestamp: float) -> None:
    """Give every file and folder under ``folder`` (and itself) one modification time."""
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (timestamp, timestamp))


def page_html(page: dict[str, Any]) -> str:
    """The reader page: ``page`` (study id, reader, task, views, cases in this reader's order) as JSON in
    the page, and the viewer's CSS and script inline: nothing is loaded from the network."""
    data = json.dumps(page, separators=(",", ":")).replace("</", "<\\/")
    return (
        TEMPLATE.replace("@TITLE@", html.escape(f"Reader study: {page['reader']}"))
        .replace("@CSS@", CSS)
        .replace("@DATA@", data)
        .replace("@SCRIPT@", SCRIPT)
    )


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>@CSS@</style>
</head>
<body>
<header><h1 id="title"></h1><p id="instructions"></p>
<p><span id="progress"></span> <span id="status"></span></p></header>
<main id="study">
<section id="case"></section>
<form id="form" autocomplete="off"></form>
<p class="buttons"><button type="button" id="previous">Previous</button>
<button type="button" id="save" disabled>Save and next</button>
<button type="button" id="export">Export answers</button>
<a id="download" hidden></a></p>
<p id="done" hidden>Every case is answered. Export your answers and send the file to the study's organiser.
You may still go back and change an answer.</p>
</main>
<footer>Use the slider, the mouse wheel or the arrow keys (up / down) to move through the slices of the
view under the pointer. Your answers are saved in this browser as you go: you can close the page and
come back later. No answer is marked right or wrong during the study.</footer>
<script type="application/json" id="page-data">@DATA@</script>
<script>@SCRIPT@</script>
</body>
</html>
"""

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1rem 2rem;
       background: #1e1e1e; color: #e8e8e8; }
h1 { font-size: 1.3rem; margin: 0 0 0.3rem; }
#progress { font-weight: 600; } #status { color: #aaa; margin-left: 1rem; }
.volume { margin: 0.6rem 0; } .volume h2 { font-size: 1rem; margin: 0.2rem 0; }
.views { display: flex; gap: 1rem; flex-wrap: wrap; }
.view { display: flex; flex-direction: column; align-items: center; }
.viewport { overflow: hidden; position: relative; background: #000; outline: 1px solid #444; }
.viewport img { position: absolute; left: 0; top: 0; image-rendering: pixelated; user-select: none; }
.view label { font-size: 0.85rem; color: #bbb; }
.view input[type=range] { width: 100%; }
fieldset { border: 1px solid #444; margin: 0.5rem 0; }
fieldset label { margin-right: 1rem; white-space: nowrap; }
textarea { width: 100%; max-width: 48rem; height: 3rem; }
button { font-size: 1rem; padding: 0.3rem 1rem; }
footer { color: #999; font-size: 0.85rem; margin-top: 1.5rem; }
"""

SCRIPT = r"""
"use strict";
const P = JSON.parse(document.getElementById("page-data").textContent);
const STORE = "medddpm-study:" + P.study + ":" + P.reader;
const served = location.protocol === "http:" || location.protocol === "https:";
let state = load();
let current = firstOpen();
let active = null;

function load() {
  try { const s = JSON.parse(localStorage.getItem(STORE)); if (s && s.answers) return s; } catch (e) {}
  return {answers: {}};
}
function persist() { localStorage.setItem(STORE, JSON.stringify(state)); }
function answered() { return P.cases.filter(c => c.id in state.answers).length; }
function firstOpen() {
  const i = P.cases.findIndex(c => !(c.id in state.answers));
  return i < 0 ? P.cases.length - 1 : i;
}
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function viewPanel(volumeId, view) {
  const g = P.views[view];
  const box = el("div", {class: "view"});
  const port = el("div", {class: "viewport", "data-view": view});
  port.style.width = g.width + "px"; port.style.height = g.height + "px";
  const img = el("img", {src: "img/" + volumeId + "-" + view + ".png", alt: view, draggable: "false"});
  img.style.width = g.width + "px"; img.style.height = (g.height * g.slices) + "px";
  port.appendChild(img);
  const slider = el("input", {type: "range", min: 0, max: g.slices - 1, value: Math.floor(g.slices / 2)});
  const label = el("label");
  const show = () => {
    img.style.top = (-Number(slider.value) * g.height) + "px";
    label.textContent = view + " " + (Number(slider.value) + 1) + " / " + g.slices;
  };
  const step = d => { slider.value = Math.min(g.slices - 1, Math.max(0, Number(slider.value) + d)); show(); };
  slider.addEventListener("input", show);
  port.addEventListener("wheel", e => { e.preventDefault(); step(e.deltaY > 0 ? 1 : -1); }, {passive: false});
  port.addEventListener("mouseenter", () => { active = step; });
  if (active === null) active = step;  // the keys move the first view until the pointer picks another
  box.append(port, slider, label);
  show();
  return box;
}

function render() {
  const c = P.cases[current];
  document.getElementById("title").textContent = "Case " + (current + 1) + " of " + P.cases.length;
  document.getElementById("progress").textContent = answered() + " of " + P.cases.length + " answered";
  const section = document.getElementById("case");
  section.replaceChildren();
  active = null;
  c.volumes.forEach((v, i) => {
    const box = el("div", {class: "volume"});
    if (c.volumes.length > 1) box.appendChild(el("h2", {}, "ABCDEFGH"[i]));
    const views = el("div", {class: "views"});
    for (const view of ["axial", "coronal", "sagittal"]) views.appendChild(viewPanel(v, view));
    box.appendChild(views);
    section.appendChild(box);
  });
  const form = document.getElementById("form");
  form.replaceChildren();
  const saved = state.answers[c.id] || {};
  for (const q of P.task.questions) {
    const fs = el("fieldset", {"data-question": q.key});
    fs.appendChild(el("legend", {}, q.label));
    for (const [value, text] of q.choices) {
      const label = el("label");
      const input = el("input", {type: "radio", name: q.key, value: value});
      if (String(saved[q.key]) === value) input.checked = true;
      label.append(input, " " + text);
      fs.appendChild(label);
    }
    form.appendChild(fs);
  }
  const comment = el("textarea", {name: "comment", placeholder: "Comment (optional)"});
  comment.value = saved.comment || "";
  form.appendChild(comment);
  form.onchange = check;
  check();
  document.getElementById("previous").disabled = current === 0;
  document.getElementById("done").hidden = answered() < P.cases.length;
}

function formAnswer() {
  const form = document.getElementById("form");
  const a = {case: P.cases[current].id};
  for (const q of P.task.questions) {
    const x = form.querySelector("input[name='" + q.key + "']:checked");
    a[q.key] = x ? x.value : null;
  }
  a.comment = form.querySelector("textarea").value;
  return a;
}
function check() {
  const a = formAnswer();
  document.getElementById("save").disabled = P.task.questions.some(q => a[q.key] === null);
}

function save() {
  const a = formAnswer();
  a.time = new Date().toISOString();
  state.answers[a.case] = a;
  persist();
  if (served) send(a);
  const next = P.cases.findIndex((c, i) => i > current && !(c.id in state.answers));
  current = next >= 0 ? next : firstOpen();
  render();
}
function send(a) {
  const status = document.getElementById("status");
  fetch("answers", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(a)})
    .then(r => { status.textContent = r.ok ? "sent" : "not sent (" + r.status + "); kept in this browser"; })
    .catch(() => { status.textContent = "not sent; kept in this browser"; });
}
function exportAnswers() {
  const out = {study: P.study, reader: P.reader, task: P.task.key, exported: new Date().toISOString(),
               answers: P.cases.filter(c => c.id in state.answers).map(c => state.answers[c.id])};
  const blob = new Blob([JSON.stringify(out, null, 1)], {type: "application/json"});
  const a = document.getElementById("download");
  a.href = URL.createObjectURL(blob);
  a.download = "answers-" + P.reader + ".json";
  a.click();
}

document.getElementById("instructions").textContent = P.task.instructions;
document.getElementById("save").addEventListener("click", save);
document.getElementById("previous").addEventListener("click", () => {
  current = Math.max(0, current - 1);
  render();
});
document.getElementById("export").addEventListener("click", exportAnswers);
document.addEventListener("keydown", e => {
  if (!active || e.target.tagName === "TEXTAREA") return;
  if (e.key === "ArrowUp") { active(-1); e.preventDefault(); }
  if (e.key === "ArrowDown") { active(1); e.preventDefault(); }
});
render();
"""
