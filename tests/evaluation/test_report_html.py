"""report.html as a reader gets it: well-formed, its metrics table complete, every image a PNG that
decodes, folder names with markup characters shown as text, and the page rendered by a real browser.

One ``medddpm evaluate`` run serves the module. Its folders are named with ``<``, ``>``, ``&`` and both
quotes, so a name pasted into the HTML unescaped would open tags, start entities or end attributes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medddpm.evaluation.specs import METRICS, table_rows
from tests.conftest import IN_CI
from tests.evaluation.test_measure import blobs, noisy, run_cli, write_set

N = 6  # enough for PRDC (nearest_k 5): every metric has a value
MARKUP_NAME = """<b>scans</b> & "quoted" 'names'"""
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# HTML lets these end implicitly; the report closes every one of them, and is checked to do so.


class Page(HTMLParser):
    """The report's structure: every element closed in order, the tables' cells, the images' sources."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problems: list[str] = []
        self.tags: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag in VOID:
            return
        self.open.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.open[-1] if self.open else 'nothing'}>")
            return
        self.open.pop()
        if tag in ("td", "th"):
            self.tables[-1][-1].append(" ".join("".join(self._cell or []).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_html")
    real = write_set(root / f"real {MARKUP_NAME}", blobs(N, seed=0))
    synth = write_set(root / f"synthetic {MARKUP_NAME}", noisy(blobs(N, seed=1), 15.0, seed=2))
    out = root / "report"
    code, _, err = run_cli(["evaluate", real, synth, "--output", out, "--max-pairs", "6"])
    assert code == 0, err
    return out


def test_report_is_well_formed_with_every_metric_row(report: Path):
    page = parse((report / "report.html").read_text(encoding="utf-8"))
    assert page.problems == [] and page.open == [], (page.problems, page.open)
    assert page.tags[0] == "html" and page.tags.count("body") == 1

    metrics = json.loads((report / "metrics.json").read_text())
    table = page.tables[0]
    assert table[0] == ["Metric", "Value", "Direction", "What it says, and its caveat"]
    specs = table_rows()
    assert len(table) == 1 + len(METRICS) == 1 + len(specs)
    for row, spec in zip(table[1:], specs, strict=True):
        assert row[:3] == [spec.label, spec.format(metrics), spec.direction], row
        assert row[3].startswith(" ".join(spec.meaning.split()))
    assert "unavailable" not in [row[1] for row in table[1:]]  # every metric computed here


def test_every_embedded_image_decodes_as_a_png(report: Path):
    page = parse((report / "report.html").read_text(encoding="utf-8"))
    assert len(page.images) == 4
    prefix = "data:image/png;base64,"
    for src in page.images:
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix) :], validate=True)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            image.load()  # decodes every pixel: a truncated or corrupt file raises here
            assert min(image.size) > 50 and np.asarray(image).std() > 0  # a figure, not a blank


def test_folder_names_with_markup_characters_are_shown_as_text(report: Path):
    text = (report / "report.html").read_text(encoding="utf-8")
    assert MARKUP_NAME not in text and html.escape(MARKUP_NAME) in text
    page = parse(text)
    assert "b" not in page.tags  # the name's <b> opened no element
    settings = {row[0]: row[1] for row in page.tables[1]}
    real, synth = (report.parent / f"{name} {MARKUP_NAME}" for name in ("real", "synthetic"))
    assert settings["Real scans"] == " ".join(f"{real} ({N} files)".split())
    assert settings["Synthetic scans"] == " ".join(f"{synth} ({N} files)".split())


def browser_or_skip():
    """A headless Chromium driven by selenium; without one, a skip here and a failure in CI (.ci/run
    installs Debian's chromium and chromium-driver first)."""
    webdriver = pytest.importorskip("selenium.webdriver")  # in CI, conftest turns this skip into a failure
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        reason = (
            f"no browser for the report test: {', '.join(missing)} missing "
            "(apt-get install chromium chromium-driver)"
        )
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return webdriver


def chromium(tmp_path: Path):
    """Headless Chromium driven by selenium, with its own profile and driver log under ``tmp_path``,
    browser console logs kept (``driver.get_log("browser")``); skips as browser_or_skip does."""
    webdriver = browser_or_skip()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


def test_report_renders_in_a_real_browser(report: Path, tmp_path: Path):
    """Chromium opens the report offline: no console errors, every image shown with a natural size,
    and the browser's own parser finds the metrics table's rows and the escaped folder names.

    Chromium draws a truncated PNG's first rows without complaint: that the embedded files are whole
    is test_every_embedded_image_decodes_as_a_png's part."""
    driver = chromium(tmp_path)
    try:
        driver.get((report / "report.html").as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        images = driver.execute_script(
            "return Array.from(document.images, i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
        rows = driver.execute_script("return document.querySelector('table').rows.length")
        settings = driver.execute_script("return document.querySelectorAll('table')[1].innerText")
        title = driver.title
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        driver.quit()
    assert errors == []
    assert len(images) == 4 and all(done and w > 0 and h > 0 for done, w, h in images), images
    assert rows == 1 + len(METRICS)
    assert f"real {MARKUP_NAME}" in settings and f"synthetic {MARKUP_NAME}" in settings
    assert title == f"medddpm evaluation: {N} synthetic vs {N} real"
