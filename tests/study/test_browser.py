"""A reader's page in a real browser (headless Chromium, selenium): slices move by wheel, slider and
keys; every case answered with a reload half-way; the export read by ``study analyze``.

Without Chromium the test skips saying so; in CI it fails instead (browser_or_skip)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.evaluation.test_measure import run_cli
from tests.evaluation.test_report_html import chromium


def answer_current(driver, key: dict) -> str:
    """Answer the shown case truthfully, with confidence 4; returns its id."""
    page = driver.execute_script("return P.cases[current].id")
    truth = key["cases"][page]["truth"]
    driver.find_element("css selector", f"input[name=answer][value={truth}]").click()
    driver.find_element("css selector", "input[name=confidence][value='4']").click()
    driver.find_element("id", "save").click()
    return page


def test_a_reader_scrolls_answers_resumes_and_exports(binary_study: Path, tmp_path: Path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.keys import Keys

    key = json.loads((binary_study / "key.json").read_text())
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chromium(tmp_path)
    try:
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        driver.get((binary_study / "readers" / "reader-01" / "index.html").as_uri())
        total = len(key["cases"])
        assert driver.find_element("id", "progress").text == f"0 of {total} answered"
        # the slices move: mouse wheel over the axial view, then the down key, then the slider
        port = driver.find_element("css selector", ".viewport[data-view=axial]")
        slider = driver.find_element("css selector", ".view input[type=range]")
        start = int(slider.get_attribute("value"))
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(port), 0, 120).perform()
        assert int(slider.get_attribute("value")) == start + 1
        ActionChains(driver).move_to_element(port).send_keys(Keys.ARROW_DOWN).perform()
        assert int(slider.get_attribute("value")) == start + 2
        top = port.find_element("tag name", "img").value_of_css_property("top")
        height = driver.execute_script("return P.views.axial.height")
        assert top == f"{-(start + 2) * height}px"
        images = driver.execute_script(
            "return Array.from(document.images, i => i.complete && i.naturalWidth)"
        )
        assert len(images) == 3 and all(images)
        # save stays disabled until every question is answered
        assert not driver.find_element("id", "save").is_enabled()
        answered = [answer_current(driver, key) for _ in range(total // 2)]
        driver.refresh()
        assert driver.find_element("id", "progress").text == f"{total // 2} of {total} answered"
        resumed = driver.execute_script("return P.cases[current].id")
        assert resumed not in answered
        answered += [answer_current(driver, key) for _ in range(total - total // 2)]
        assert sorted(answered) == sorted(key["cases"])
        assert driver.find_element("id", "done").is_displayed()
        driver.find_element("id", "export").click()
        export = downloads / "answers-reader-01.json"
        deadline = time.monotonic() + 10
        while not export.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        driver.quit()
    assert errors == []
    data = json.loads(export.read_text())
    assert data["reader"] == "reader-01" and len(data["answers"]) == total
    out = tmp_path / "report"
    code, _, err = run_cli(["study", "analyze", binary_study, export, "--output", out])
    assert code == 0, err
    r = json.loads((out / "analysis.json").read_text())
    assert r["per_reader"]["reader-01"]["accuracy"] == 1.0 and r["per_reader"]["reader-01"]["n"] == total
