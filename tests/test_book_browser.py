"""Open every page of the built book in headless Chromium, as a reader would.

The book is built once per session with ``IWAE_PROFILE=smoke`` (seconds per chapter) into a
temporary folder, or taken from ``$IWAE_BOOK_HTML`` (a ``_build/html`` folder) when set. Each
page must load, show its figures (images of non-zero size) and carry no error output. A
screenshot of each page is saved under ``artifacts/screenshots/``.

The formulas must have rendered, from the MathJax the book serves itself (no network): MathJax
output elements on every chapter, no MathJax error element, no raw TeX delimiter left in the text.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``scripts/install_browser.sh``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
pytestmark = pytest.mark.browser


def _pages() -> list[str]:
    from test_notebooks_clean import toc_files

    return [f.rsplit(".", 1)[0] for f in toc_files()]


def _chrome_paths() -> tuple[str, str] | None:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chrome, driver) if chrome and driver else None


@pytest.fixture(scope="session")
def book_html(tmp_path_factory) -> Path:
    given = os.environ.get("IWAE_BOOK_HTML")
    if given:
        html = Path(given)
        assert (html / "index.html").exists(), f"IWAE_BOOK_HTML={given} holds no index.html"
        return html
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ)
    env.setdefault("IWAE_PROFILE", "smoke")
    env["IWAE_BOOK_BUILD"] = "1"  # as scripts/build_book.sh: no progress lines on the pages
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(ROOT), "--path-output",
           str(out), "-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout[-6000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, f"the book build failed or warned:\n{log}"
    return out / "_build" / "html"


@pytest.fixture(scope="session")
def browser():
    paths = _chrome_paths()
    if paths is None:
        msg = "chromium and chromedriver are not installed (run scripts/install_browser.sh)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1600",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='iwae-chrome-')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(paths[1]), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


_IMAGES_JS = """
const main = document.querySelector('main') || document.body;
return Array.from(main.querySelectorAll('img')).map(
    i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight]);
"""

_ERRORS_JS = """
const sel = '.output.error, .output.traceback, div.cell_output .traceback, .nb-error';
return Array.from(document.querySelectorAll(sel)).map(e => e.innerText.slice(0, 300));
"""


_MATH_JS = """
const done = arguments[arguments.length - 1];
const scripts = Array.from(document.querySelectorAll('script[src*="mathjax" i]')).map(
    s => s.getAttribute('src'));
const report = () => done({
    scripts: scripts,
    rendered: document.querySelectorAll('mjx-container').length,
    errors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
    typeset: !!(window.MathJax && window.MathJax.startup),
});
if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(report, report);
} else {
    setTimeout(report, 3000);
}
"""


_PROSE_JS = """
const main = document.querySelector('main') || document.body;
const clone = main.cloneNode(true);
clone.querySelectorAll('pre, code, mjx-container, script, style, .highlight').forEach(
    e => e.remove());
return clone.innerText;
"""

_OVERFLOW_JS = """
const out = [];
document.querySelectorAll('mjx-container[display="true"]').forEach(c => {
    const m = c.querySelector('mjx-math') || c;
    const w = m.getBoundingClientRect().width;
    const box = (c.closest('.math-wrapper, .cell_output, section, article') || c.parentElement);
    const avail = Math.min(box.getBoundingClientRect().width, c.getBoundingClientRect().width);
    if (w > avail + 2) out.push([c.innerText.slice(0, 60), Math.round(w), Math.round(avail)]);
});
return out;
"""

_BARE_OUTPUTS_JS = """
return Array.from(document.querySelectorAll('.cell_output .output pre, .cell_output pre')).map(
    e => e.innerText.trim()).filter(t => /^[-+]?[0-9][0-9.,eE+-]*$/.test(t));
"""


def check_prose(page: str, browser) -> None:
    """No raw TeX or ``{glue}`` role in the text (code excluded), no display equation wider
    than its column at 1280 and 800 px, no output that is only a bare number."""
    prose = browser.execute_script(_PROSE_JS)
    assert "{glue" not in prose, f"{page}: a raw glue role in the text"
    for raw in ("$$", "\\(", "\\mathbb", "\\mathcal", "\\frac"):
        assert raw not in prose, f"{page}: raw TeX {raw!r} in the text"
    bare = browser.execute_script(_BARE_OUTPUTS_JS)
    assert not bare, f"{page}: outputs that are only a number: {bare[:5]}"
    for width in (1280, 800):
        browser.set_window_size(width, 1600)
        browser.execute_script("return document.readyState")
        wide = browser.execute_script(_OVERFLOW_JS)
        assert not wide, f"{page}: display equations wider than the column at {width} px: {wide}"
    browser.set_window_size(1280, 1600)


def check_math(page: str, browser) -> None:
    """MathJax came from the book (not a CDN) and typeset every formula of the page."""
    browser.set_script_timeout(30)
    math = browser.execute_async_script(_MATH_JS)
    text = browser.find_element("tag name", "body").text
    if page.startswith("notebooks/"):
        assert math["scripts"], f"{page}: no MathJax script on the page"
        assert all("_static/mathjax/" in src and "://" not in src for src in math["scripts"]), (
            f"{page}: MathJax is not served by the book itself: {math['scripts']}")
        assert math["rendered"] > 0, f"{page}: no formula was rendered ({math})"
    assert math["errors"] == 0, f"{page}: {math['errors']} MathJax error(s)"
    for raw in ("\\(", "\\["):
        assert raw not in text, f"{page}: raw TeX {raw!r} left in the text"


@pytest.mark.parametrize("page", _pages())
def test_page_loads_shows_figures_and_no_errors(page, book_html, browser):
    html = book_html / f"{page}.html"
    assert html.exists(), f"{page}.html was not built"
    browser.get(html.as_uri())
    browser.execute_script("return document.readyState")  # waits for the load
    title = browser.title
    assert title and "404" not in title, title

    images = browser.execute_script(_IMAGES_JS)
    broken = [src for src, complete, w, h in images if not (complete and w > 0 and h > 0)]
    assert not broken, f"{page}: images that did not load: {broken}"
    if page.startswith("notebooks/"):
        figures = [src for src, *_ in images if "logo" not in (src or "")]
        assert figures, f"{page}: a chapter should show at least one figure"

    errors = browser.execute_script(_ERRORS_JS)
    assert not errors, f"{page}: error outputs on the page: {errors}"
    text = browser.find_element("tag name", "body").text
    assert "Traceback (most recent call last)" not in text, f"{page}: a traceback is shown"
    check_math(page, browser)
    check_prose(page, browser)
    if page.startswith("notebooks/"):
        wide = [(src, w) for src, _, w, _ in images if w > 1400]
        assert not wide, f"{page}: figures wider than 1,400 px: {wide}"

    SHOTS.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, max(800, min(int(height), 12000)))
    shot = SHOTS / (page.replace("/", "__") + ".png")
    browser.save_screenshot(str(shot))
    browser.set_window_size(1280, 1600)
    assert shot.stat().st_size > 10_000, f"{page}: the screenshot is suspiciously small"



def test_the_sidebar_numbers_the_chapters(book_html, browser):
    browser.get((book_html / "book" / "intro.html").as_uri())
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('nav.bd-links a, .bd-sidebar a'))"
        ".map(a => a.innerText.trim());")
    chapters = [t for t in links if t[:1].isdigit()]
    assert len(chapters) >= 10, links
    assert any(t.startswith("5.") and "Density" in t for t in chapters), chapters
