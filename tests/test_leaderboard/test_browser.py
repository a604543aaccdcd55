"""The HTML leaderboard in a real headless Chromium (Selenium + Debian's chromium-driver).

Needs ``apt-get install -y chromium chromium-driver`` and the ``test`` extra (selenium); skips
with the reason when either is missing. ``SSLBENCH_SCREENSHOT=1`` also saves a screenshot of the
board rendered from the committed records to ``docs/leaderboard.png``.
"""
from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record as base_record

from sslbench.leaderboard.aggregation import aggregate
from sslbench.leaderboard.html import REPORTED_TITLE, render_html, render_html_dir

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
EVIL = "<script>alert(1)</script>"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: install it with 'apt-get install -y chromium "
                f"chromium-driver'", allow_module_level=True)
if not CHROMEDRIVER.exists():
    pytest.skip(f"{CHROMEDRIVER} not found: install it with 'apt-get install -y "
                f"chromium-driver'", allow_module_level=True)
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

pytestmark = pytest.mark.slow  # starts a browser: ~10 s on a busy 2-core machine

# Runs before any page script: records dialogs instead of opening them.
HOOK_DIALOGS = """
window.__dialogs = [];
["alert", "confirm", "prompt", "print"].forEach(function (name) {
  window[name] = function (msg) { window.__dialogs.push(name + ":" + String(msg)); return null; };
});
"""


def make_record(**overrides: Any) -> dict[str, Any]:
    return base_record(**{"protocol_settings": {"solver": "lbfgs"}, **overrides})


def synthetic_records() -> list[dict[str, Any]]:
    recs = []
    for method, backbone, accs, extra in [
        ("simclr", "resnet18", [0.60, 0.62, 0.64], {}),
        ("byol", "resnet18", [0.70, 0.72], {}),
        (EVIL, "vit_small", [0.50], {}),
        ("raw_pixels", "pixels", [0.30], {"pretrain": None, "run_id": None}),
        ("dino", "resnet18", [0.80], {"dataset": "cifar10"}),
        ("simclr", "resnet18", [0.55], {"protocol": "knn", "protocol_settings": {"k": 20}}),
    ]:
        for seed, acc in enumerate(accs):
            recs.append(make_record(method=method, backbone=backbone, seed=seed,
                                    metrics={"acc": acc, "ood_acc": acc - 0.2}, **extra))
    recs.append(make_record(kind="reported", method="simclr", backbone="resnet50",
                            dataset="cifar10", run_id=None, pretrain=None, provenance={},
                            wall_time_s=None, metrics={"acc": 0.906},
                            recipe={"name": "paper", "path": None, "sha256": None},
                            source="Chen et al. 2020, Table B.6"))
    return recs


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--hide-scrollbars", "--no-first-run",
                "--disable-extensions", "--disable-background-networking",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.set_capability("unhandledPromptBehavior", "ignore")
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    d.set_page_load_timeout(30)
    d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HOOK_DIALOGS})
    yield d
    d.quit()


def open_page(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def severe(driver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def visible(driver, table: str, what: str = "method") -> list[str]:
    """Text of the visible rows' method (or backbone) cells, top to bottom."""
    index = {"method": "td.method", "backbone": "td:nth-child(4)"}[what]
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll('#{table} tbody tr[data-row]'))"
        f".filter(tr => !tr.hidden).map(tr => tr.querySelector('{index}').firstChild"
        f".textContent.trim());")


def click_header(driver, table: str, label: str) -> None:
    driver.find_element(By.CSS_SELECTOR,
                        f'#{table} th[data-label="{label}"] button.sort').click()


def test_board_in_headless_chromium(driver, tmp_path: Path) -> None:
    # rendered from the records directly: the writer and loader refuse an unsafe method name
    # (a script tag), and what this test checks is that the page escapes one all the same
    page = tmp_path / "board.html"
    page.write_text(render_html(aggregate(synthetic_records())), encoding="utf-8")
    open_page(driver, page)

    # no console errors (CSP violations, script errors), no dialog, the name shows as text
    assert severe(driver) == []
    assert driver.execute_script("return window.__dialogs") == []
    assert driver.execute_script("return document.scripts.length") == 2
    assert driver.execute_script("return document.querySelectorAll('img').length") == 0
    methods = visible(driver, "measured")
    assert EVIL in methods
    evil_cell = [c for c in driver.find_elements(By.CSS_SELECTOR, "#measured td.method")
                 if c.text == EVIL]
    assert len(evil_cell) == 1 and evil_cell[0].is_displayed()
    # default order: dataset, protocol, then top-1 best first
    assert methods == ["dino", "byol", "simclr", EVIL, "raw_pixels", "simclr"]

    # reported rows live in their own section
    heading = driver.find_element(By.CSS_SELECTOR, "section.reported h2")
    assert heading.text == REPORTED_TITLE
    assert visible(driver, "reported") == ["simclr"]
    assert "Chen et al. 2020, Table B.6" in driver.find_element(By.ID, "reported").text

    # clicking a header sorts (numbers best first, then reversed); text sorts A-Z
    click_header(driver, "measured", "Top-1 (%)")
    assert visible(driver, "measured") == ["dino", "byol", "simclr", "simclr", EVIL,
                                           "raw_pixels"]
    th = driver.find_element(By.CSS_SELECTOR, '#measured th[data-label="Top-1 (%)"]')
    assert th.get_attribute("aria-sort") == "descending"
    click_header(driver, "measured", "Top-1 (%)")
    assert visible(driver, "measured") == ["raw_pixels", EVIL, "simclr", "simclr", "byol",
                                           "dino"]
    assert th.get_attribute("aria-sort") == "ascending"
    click_header(driver, "measured", "Backbone")
    backbones = visible(driver, "measured", "backbone")
    assert backbones == sorted(backbones) and backbones[0] == "pixels"

    # provenance opens under its row and stays there when the table is re-sorted
    toggle = driver.find_element(By.CSS_SELECTOR, "#measured tr[data-row] button.prov-toggle")
    row_id = toggle.find_element(By.XPATH, "./ancestor::tr").get_attribute("data-row")
    prov = driver.find_element(By.ID, f"prov-{row_id}")
    assert not prov.is_displayed()
    toggle.click()
    assert prov.is_displayed() and "recipes/quickstart.yaml" in prov.text
    click_header(driver, "measured", "Method")
    assert driver.execute_script(
        "return document.getElementById(arguments[0]).previousElementSibling"
        ".getAttribute('data-row')", f"prov-{row_id}") == row_id

    # a filter select hides rows (and their open provenance); reset shows them again
    total = len(methods) + 1
    Select(driver.find_element(By.ID, "filter-dataset")).select_by_value("cifar10")
    assert visible(driver, "measured") == ["dino"]
    assert visible(driver, "reported") == ["simclr"]
    assert driver.find_element(By.ID, "filter-count").text == f"2 of {total} rows shown"
    byol = driver.execute_script(  # WebElement.text is "" for hidden elements: use the DOM
        "return Array.from(document.querySelectorAll('#measured td.method'))"
        ".find(td => td.textContent.trim() === 'byol')")
    assert byol is not None and not byol.is_displayed()
    Select(driver.find_element(By.ID, "filter-protocol")).select_by_value("knn")
    assert visible(driver, "measured") == []
    assert driver.find_element(By.CSS_SELECTOR, "#measured tr.empty").is_displayed()
    driver.find_element(By.ID, "filter-reset").click()
    Select(driver.find_element(By.ID, "filter-backbone")).select_by_value("vit_small")
    assert visible(driver, "measured") == [EVIL]
    assert not prov.is_displayed()
    driver.find_element(By.ID, "filter-reset").click()
    assert len(visible(driver, "measured")) == len(methods)
    assert prov.is_displayed()

    assert severe(driver) == []
    assert driver.execute_script("return window.__dialogs") == []
    # the checks above can fail: a console error and a dialog are both seen
    driver.execute_script("console.error('sslbench-probe'); window.alert('probe');")
    assert any("sslbench-probe" in e["message"] for e in severe(driver))
    assert driver.execute_script("return window.__dialogs") == ["alert:probe"]


def test_committed_board_screenshot(driver, tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_text(render_html_dir(REPO / "leaderboard" / "results"), encoding="utf-8")
    open_page(driver, page)
    assert severe(driver) == []
    assert driver.execute_script("return window.__dialogs") == []
    assert len(visible(driver, "measured")) > 0
    assert driver.execute_script("return document.querySelectorAll('svg').length") > 0
    overlaps = overlapping_texts(driver)
    assert overlaps == [], overlaps
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}})
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    out = tmp_path / "leaderboard.png"
    out.write_bytes(png)
    if os.environ.get("SSLBENCH_SCREENSHOT") == "1":
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(out, docs / "leaderboard.png")


def test_committed_board_fits_1400px_without_horizontal_scroll(driver, tmp_path: Path) -> None:
    """Every column of the measured table is on screen in a 1,400 px wide window: the paired
    columns and provenance are not scrolled off to the right."""
    page = tmp_path / "index.html"
    page.write_text(render_html_dir(REPO / "leaderboard" / "results"), encoding="utf-8")
    driver.set_window_size(1400, 900)
    try:
        open_page(driver, page)
        widths = driver.execute_script(
            "const w = document.querySelector('#measured').closest('.table-wrap');"
            "return [w.scrollWidth, w.clientWidth, window.innerWidth];")
    finally:
        driver.set_window_size(1280, 900)
    scroll, client, inner = widths
    assert inner <= 1400 and scroll <= client, widths


def figure_records() -> list[dict[str, Any]]:
    """Rows for every kind of figure: loss curves, three label fractions, LP vs FT vs LP-FT,
    pretraining costs; methods close in accuracy so that labels compete for room."""
    recs = []
    curve = [[s, 2.0 + 3.0 * 0.99 ** s] for s in range(20, 340, 20)]
    for i, (method, backbone) in enumerate([("simclr", "test_resnet"), ("moco_v2", "test_resnet"),
                                            ("dino", "test_vit"), ("mae", "test_vit"),
                                            ("rotation", "test_resnet")]):
        for seed in range(3):
            pretrain = {"steps": 320, "wall_time_s": 60.0 + i, "total_flops": 1e12 * (1 + i / 50),
                        "loss_curve": [[s, v + 0.1 * seed + i] for s, v in curve]}
            common = dict(method=method, backbone=backbone, seed=seed, run_id=f"{method}-{seed}",
                          pretrain=pretrain)
            for f in (1.0, 0.1, 0.01):
                acc = 0.5 + 0.01 * i + 0.3 * (f == 1.0) - 0.2 * (f == 0.01) + 0.01 * seed
                recs.append(make_record(metrics={"acc": acc, "ood_acc": acc - 0.2},
                                        protocol_settings={"solver": "lbfgs",
                                                           "label_fraction": f}, **common))
            for protocol, acc in (("finetune", 0.85), ("lpft", 0.87)):
                recs.append(make_record(protocol=protocol, protocol_settings={"steps": 150},
                                        metrics={"acc": acc + 0.01 * i, "ood_acc": acc - 0.3},
                                        **common))
    return recs


def overlapping_texts(driver) -> list[tuple[str, str, str]]:
    """Pairs of SVG text labels (with their figure's caption) whose on-screen boxes intersect
    by more than a pixel each way."""
    return driver.execute_script("""
        const out = [];
        for (const fig of document.querySelectorAll('figure')) {
          const caption = fig.querySelector('figcaption b').textContent;
          const boxes = Array.from(fig.querySelectorAll('svg text'))
            .map(t => [t.textContent, t.getBoundingClientRect()]);
          for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
            const [a, p] = boxes[i], [b, q] = boxes[j];
            if (Math.min(p.right, q.right) - Math.max(p.left, q.left) > 1 &&
                Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top) > 1) out.push([caption, a, b]);
          }
        }
        return out;""")


def test_figures_render_without_overlapping_labels(driver, tmp_path: Path) -> None:
    page = tmp_path / "figures.html"
    page.write_text(render_html(aggregate(figure_records())), encoding="utf-8")
    open_page(driver, page)
    assert severe(driver) == []
    captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "figcaption b")]
    for wanted in ("Pretraining loss", "Linear probe vs fine-tuning vs LP-FT",
                   "Top-1 vs label fraction", "Top-1 vs pretraining cost: wall time"):
        assert wanted in captions, captions
    # each figure is drawn at a readable size
    sizes = driver.execute_script(
        "return Array.from(document.querySelectorAll('figure svg'))"
        ".map(s => [s.getBoundingClientRect().width, s.getBoundingClientRect().height])")
    assert all(w >= 400 and h >= 150 for w, h in sizes), sizes
    overlaps = overlapping_texts(driver)
    assert overlaps == [], overlaps
    # the check can fail: two labels drawn at one spot are reported
    driver.execute_script(
        "const s = document.querySelector('figure svg');"
        "for (const w of ['probe-a', 'probe-b']) { const t = document.createElementNS("
        "'http://www.w3.org/2000/svg', 'text'); t.setAttribute('x', 100); t.setAttribute('y', 100);"
        "t.textContent = w; s.appendChild(t); }")
    assert any(pair[1:] == ["probe-a", "probe-b"] for pair in overlapping_texts(driver))
    for i, fig in enumerate(driver.find_elements(By.TAG_NAME, "figure")):
        driver.execute_script("arguments[0].scrollIntoView()", fig)
        png = fig.screenshot_as_png
        assert png.startswith(b"\x89PNG") and len(png) > 5_000
        (tmp_path / f"figure{i}.png").write_bytes(png)  # synthetic rows: never into docs/
