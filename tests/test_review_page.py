"""``review.html`` (``--format html``): card order, flags, escaping and self-contained links
from the writer; and the page itself in a real headless Chromium (Debian's ``chromium``
and ``chromium-driver``, installed by ``tests/install_chromium.sh`` where missing): it
loads with no console errors, shows the cards worst first, the flagged filter hides the
others and the keys move between cards."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sst.client.segment_outputs import FORMATS, OutputSet
from sst.tracker.io.review_page import render_review_page, review_cards, write_review_page

ROOT = Path(__file__).resolve().parents[1]
NAMES = {1: "head", 2: "pronotum", 3: "elytra"}


def _rows(quality: dict[str, dict[int, float]] | dict[str, None]) -> list[dict]:
    rows = []
    for i, (query, q) in enumerate(quality.items()):
        for lab in NAMES:
            rows.append({"query": query, "label": lab, "area": 100 * lab + i,
                         "object_score": 1.0, "iou": 0.9, "seconds": 0.1,
                         "name": NAMES[lab], "quality": None if q is None else q[lab]})
    return rows


#: 6 queries, 3 below 0.5; img2 and img10 tie at 0.8 (natural order breaks it).
QUALITY = {
    "img10.png": {1: 0.9, 2: 0.8, 3: 0.95},
    "img2.png": {1: 0.8, 2: 0.85, 3: 0.9},
    "bad one.png": {1: 0.05, 2: 0.6, 3: 0.7},
    "img3.png": {1: 0.7, 2: 0.3, 3: 0.9},
    "img1.png": {1: 0.99, 2: 0.97, 3: 0.98},
    'odd <&"name>.png': {1: 0.6, 2: 0.55, 3: 0.45},
}
ORDER = ["bad one.png", "img3.png", 'odd <&"name>.png', "img2.png", "img10.png", "img1.png"]
FLAGGED = ORDER[:3]


class _Page(HTMLParser):
    """Cards (their data- attributes) and every src/href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "article":
            self.cards.append(a)
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(str(a[key]))


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def test_cards_worst_first_flagged_below_threshold():
    cards = review_cards(_rows(QUALITY), NAMES, flag_below=0.5)
    assert [c.query for c in cards] == ORDER
    assert [c.query for c in cards if c.flagged] == FLAGGED
    assert cards[0].worst is not None and cards[0].worst.name == "head"
    assert cards[0].quality_min == pytest.approx(0.05)
    assert [ln.area for ln in cards[0].labels] == [102, 202, 302]  # labels by value
    # a stricter threshold flags more
    assert sum(c.flagged for c in review_cards(_rows(QUALITY), NAMES, 0.85)) == 5


def test_without_quality_name_order_and_no_flags():
    cards = review_cards(_rows(dict.fromkeys(["img10.png", "img2.png", "a.png"])), NAMES, 0.5)
    assert [c.query for c in cards] == ["a.png", "img2.png", "img10.png"]
    assert not any(c.flagged for c in cards) and all(c.quality_min is None for c in cards)
    text = render_review_page(cards, NAMES)
    assert "quality was not computed" in text
    assert re.search(r'id="flagged-only"[^>]*disabled', text)


def test_page_is_self_contained_and_escaped():
    text = render_review_page(review_cards(_rows(QUALITY), NAMES, 0.5), NAMES,
                              random_weights=True, failed=[("broken.png", "not an image")])
    page = _parse(text)
    assert [c["data-query"] for c in page.cards] == ORDER
    assert [c["data-flagged"] for c in page.cards] == ["1", "1", "1", "0", "0", "0"]
    assert [c["data-rank"] for c in page.cards] == ["1", "2", "3", "4", "5", "6"]
    # nothing from a network: every link is relative, no external script or style
    assert page.links and all(not re.match(r"^[a-z]+:|^//|^/", u) for u in page.links)
    assert "link" not in page.tags and "http" not in text
    assert "overlay/bad%20one.png" in page.links and "bad%20one.png" in page.links
    assert "odd <&" not in text and "odd &lt;&amp;&quot;name&gt;.png" in text
    assert "RANDOM WEIGHTS" in text and "broken.png: not an image" in text
    assert "<script>" in text and "<style>" in text


def _fake_result(h: int, w: int, seed: int) -> SimpleNamespace:
    mask = np.random.default_rng(seed).integers(0, 4, (h, w)).astype(np.uint8)
    return SimpleNamespace(labels=[1, 2, 3], mask=mask, logits=None)


def test_output_set_writes_the_page_and_its_overlays(tmp_path):
    """``--format png,html`` (no ``overlay``): the overlays the page shows are written all
    the same, and every link of the page names a file of the folder."""
    assert "html" in FORMATS
    writer = OutputSet(tmp_path, ["png", "html"], [1, 2, 3], NAMES, legend=True)
    rows = []
    for i, name in enumerate(["q1.png", "q 2.jpg"]):
        res = _fake_result(20 + i, 30, i)
        q = {1: 0.2 + i, 2: 0.9, 3: 0.9}
        writer.write_query(name, np.zeros((20 + i, 30, 3), np.uint8), res, q)
        scores = [{"label": lab, "area": int((res.mask == lab).sum()), "object_score": 1.0,
                   "iou": 1.0} for lab in (1, 2, 3)]
        rows += writer.rows_for(name, scores, 0.1, q)
    summary = SimpleNamespace(rows=rows, failed=[], processed=2, seconds=1.0,
                              quality_seconds=0.5)
    writer.write_summary(summary, "sequential", SimpleNamespace(random_weights=False))
    page = _parse((tmp_path / "review.html").read_text())
    assert [c["data-query"] for c in page.cards] == ["q1.png", "q 2.jpg"]
    for link in page.links:
        assert (tmp_path / link.replace("%20", " ")).is_file(), link
    assert (tmp_path / "overlay" / "q 2.png").is_file()


def test_write_review_page_is_atomic_and_returns_its_path(tmp_path):
    path = write_review_page(tmp_path / "sub" / "review.html", _rows(QUALITY), NAMES)
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["review.html"]  # no temporary left


# ---------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Debian's chromedriver (installed by the project's script
    where missing; skipped, with the reason, where it cannot be)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    res = subprocess.run(["bash", str(ROOT / "tests" / "install_chromium.sh")],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.skip(f"no headless Chromium: {res.stderr.strip() or res.stdout.strip()}")
    options = webdriver.ChromeOptions()
    options.binary_location = _which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _which(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} not on PATH after tests/install_chromium.sh"
    return found


def _page_folder(root: Path) -> Path:
    """``review.html`` for :data:`QUALITY` with a real overlay and label PNG per query."""
    for i, query in enumerate(QUALITY):
        stem = Path(query).stem
        (root / "overlay").mkdir(exist_ok=True)
        Image.fromarray(np.full((60, 90, 3), 40 * i, np.uint8)).save(
            root / "overlay" / f"{stem}.png")
        Image.fromarray(np.full((60, 90), 1, np.uint8)).save(root / f"{stem}.png")
    return write_review_page(root / "review.html", _rows(QUALITY), NAMES, random_weights=True)


def _shown(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.get_attribute("data-query")
            for c in driver.find_elements(By.CSS_SELECTOR, "article.card") if c.is_displayed()]


@pytest.mark.slow
def test_page_in_headless_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = _page_folder(tmp_path)
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    assert browser.title == "SST review: 6 queries"
    assert _shown(browser) == ORDER
    # the first overlay loaded from disk, through its relative path
    assert browser.execute_script(
        "var i = document.querySelector('article.card img');"
        "return i.complete && i.naturalWidth === 90;")
    box = browser.find_element(By.ID, "flagged-only")
    box.click()
    assert _shown(browser) == FLAGGED
    assert browser.find_element(By.ID, "shown").text == "3 of 6 shown"
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("j")
    body.send_keys("j")
    current = browser.find_elements(By.CSS_SELECTOR, "article.card.current")
    assert [c.get_attribute("data-query") for c in current] == [FLAGGED[1]]
    body.send_keys("f")  # filter off again
    assert _shown(browser) == ORDER and not box.is_selected()
    body.send_keys("j")
    current = browser.find_elements(By.CSS_SELECTOR, "article.card.current")
    assert [c.get_attribute("data-query") for c in current] == [ORDER[2]]
    body.send_keys("k")
    body.send_keys("k")
    body.send_keys("k")  # stops at the first card
    current = browser.find_elements(By.CSS_SELECTOR, "article.card.current")
    assert [c.get_attribute("data-query") for c in current] == [ORDER[0]]
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
