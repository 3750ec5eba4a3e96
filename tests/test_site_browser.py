"""The course website (`make site`) in a real browser: headless Chromium on the built pages.

The site is built first (tools/build_site.py, incremental: after `make site` nothing is rebuilt),
served from a loopback server (127.0.0.1, a free port), and opened in Debian's Chromium driven by
Playwright (no browser is downloaded), as a reader would:

* the home page is the README, and its navigation lists every lecture in course order;
* every lecture page renders its title and headings, at least one output, all its figures (every
  image loaded: no broken image), its launch links (Colab, Binder) and a working link to the notebook
  file; where a page has formulas, MathJax typesets them from the site's own files; where it has
  Chinese terms, a CJK font is installed to draw them;
* the search box finds a term from a lecture;
* following "next" from the home page reaches every page, the lectures in the order of the course index;
* nothing leaves the machine: every request to another host is blocked and fails the test (listed in
  ``blocked-requests.txt``), and so does any request the site's own server cannot answer (a missing file).

Screenshots (the home page, a lecture with a figure, a search result) go to ``test-artifacts/site/``
(git-ignored), beside the lists of blocked and failed requests. Skipped, with the reason under
``pytest -rs``, without ``/usr/bin/chromium``, Playwright, or the docs extra (`make install-docs`).
"""
from __future__ import annotations

import functools
import http.server
import json
import re
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from browser_support import CHROMIUM, CHROMIUM_FLAGS, CJK, OFF_MACHINE, cjk_fonts

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_site  # noqa: E402
import course_index  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts" / "site"
SEARCH_TERM = "Netron"  # taught in lecture 04 (the test checks which lectures mention it)

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(f"site browser test: {CHROMIUM} not found; install Debian's chromium to run it", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="site browser test: the playwright package is not installed")
pytest.importorskip("myst_nb", reason="site browser test: the docs extra is not installed (make install-docs)")


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test reports failed requests itself
        pass


@pytest.fixture(scope="module")
def site():
    """The built site (an incremental build: after `make site`, nothing to do)."""
    return build_site.build(quiet=True)


@pytest.fixture(scope="module")
def base(site):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(build_site.OUT)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def requests_seen():
    """Requests to other hosts (all blocked) and requests that failed or got an HTTP error."""
    return {"blocked": [], "failed": []}


@pytest.fixture(scope="module")
def chromium(tmp_path_factory, requests_seen):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()

    def block(route):
        requests_seen["blocked"].append(f"{route.request.method} {route.request.url[:300]}")
        route.abort()

    def failed(request):
        if not OFF_MACHINE.match(request.url):
            requests_seen["failed"].append(f"{request.url[:300]}: {request.failure}")

    def response(resp):
        if resp.status >= 400:
            requests_seen["failed"].append(f"{resp.url[:300]}: HTTP {resp.status}")

    playwright = sync_api.sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-site")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 900}, timeout=60_000)
        try:
            context.route(OFF_MACHINE, block)
            context.on("requestfailed", failed)
            context.on("response", response)
            yield context
        finally:
            context.close()
            (ARTIFACTS / "blocked-requests.txt").write_text("".join(f"{r}\n" for r in requests_seen["blocked"]))
            (ARTIFACTS / "failed-requests.txt").write_text("".join(f"{r}\n" for r in requests_seen["failed"]))
    finally:
        playwright.stop()


@pytest.fixture
def page(chromium, requests_seen):
    """A fresh page; after the test, nothing may have left the machine and nothing may have failed."""
    seen = {k: len(v) for k, v in requests_seen.items()}
    page = chromium.new_page()
    try:
        yield page
    finally:
        page.close()
    blocked = requests_seen["blocked"][seen["blocked"]:]
    failed = requests_seen["failed"][seen["failed"]:]
    assert not blocked, "the site tried to reach another host (nothing may leave the machine):\n" + "\n".join(blocked)
    assert not failed, "requests the site's own server could not answer (missing files):\n" + "\n".join(failed)


def docname(url: str, base: str) -> str:
    path = unquote(urlparse(url).path)[len(urlparse(base).path):]
    path = path or "index.html"
    return path[:-len(".html")] if path.endswith(".html") else path


def expected_outputs(rel: str) -> tuple[int, int, list[str]]:
    """From the committed notebook: (outputs, figures, level-2 headings)."""
    nb = json.loads((ROOT / rel).read_text(encoding="utf-8"))
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    figures = sum(any(m.startswith("image/") for m in o.get("data", {})) for o in outputs)
    headings = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            text = re.sub(r"```.*?```", "", "".join(cell["source"]), flags=re.S)
            headings += re.findall(r"^##\s+(.+?)\s*$", text, re.M)
    return len(outputs), figures, headings


SMART_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def heading_text(page, selector: str) -> list[str]:
    """Rendered headings, without their anchor sign and with the typographic quotes Sphinx puts in made plain."""
    return [t.replace("#", "").strip().translate(SMART_QUOTES) for t in page.locator(f"article {selector}").all_inner_texts()]


def test_detector_catches_an_off_machine_request(chromium, requests_seen):
    """The blocking route sees a request to another host (so a page that made one would fail)."""
    page = chromium.new_page()
    before = len(requests_seen["blocked"])
    try:
        page.set_content('<img src="https://example.com/x.png">')
        page.wait_for_timeout(500)
        caught = requests_seen["blocked"][before:]
    finally:
        page.close()
        del requests_seen["blocked"][before:]
    assert any("example.com" in r for r in caught), f"the off-machine request was not seen: {caught}"


def test_home_page_lists_the_lectures_in_order(page, base, site):
    page.goto(base, wait_until="load")
    readme_title = re.search(r"^#\s+(.+)$", (ROOT / "README.md").read_text(encoding="utf-8"), re.M).group(1).strip()
    assert heading_text(page, "h1")[0] == readme_title
    nav = [docname(a, base) for a in page.locator("nav.bd-docs-nav a.reference").evaluate_all("as => as.map(a => a.href)")]
    lectures = [p.docname for p in site.lectures]
    assert [n for n in nav if n in lectures] == lectures, f"the navigation's lectures are not the course's: {nav}"
    assert set(p.docname for p in site.pages) <= set(nav), f"pages missing from the navigation: {set(p.docname for p in site.pages) - set(nav)}"
    page.screenshot(path=str(ARTIFACTS / "1-home.png"))


def test_every_lecture_page_renders(page, base, site):
    problems, shot = [], None
    # the screenshot: the lecture with the most figures (a figure of its own, not only a graph drawing)
    pictured = max(site.lectures, key=lambda p: expected_outputs(p.rel)[1]).rel
    for lecture in site.lectures:
        rel = lecture.rel
        outputs, figures, headings = expected_outputs(rel)
        page.goto(base + lecture.docname + ".html", wait_until="load")
        title = course_index.title(ROOT / rel)
        h1, h2 = heading_text(page, "h1"), heading_text(page, "h2")
        if h1 != [re.sub(r"[`*]", "", title)]:
            problems.append(f"{rel}: title {h1} instead of {title!r}")
        if len(h2) < len(headings):
            problems.append(f"{rel}: {len(h2)} section headings shown, the notebook has {len(headings)}")
        shown = page.locator("article .cell_output").count()
        if outputs and not shown:
            problems.append(f"{rel}: no output shown (the notebook has {outputs})")
        images = page.locator("article .cell_output img")
        loaded = images.evaluate_all("is => is.filter(i => i.complete && i.naturalWidth > 0).length")
        if images.count() != figures or loaded != figures:
            problems.append(f"{rel}: {figures} figure(s) in the notebook, {images.count()} shown, {loaded} loaded")
        links = page.locator("article a").evaluate_all("as => as.map(a => a.href)")
        for service in ("https://colab.research.google.com/github/", "https://mybinder.org/v2/gh/"):
            if not any(h.startswith(service) and h.endswith(rel) for h in links):
                problems.append(f"{rel}: no launch link to {service}...{rel}")
        notebook_file = page.locator("a.site-notebook-file")
        if not notebook_file.count():
            problems.append(f"{rel}: no link to the notebook file")
        else:
            response = page.request.get(notebook_file.first.evaluate("a => a.href"))
            if not response.ok or json.loads(response.body()).get("cells") is None:
                problems.append(f"{rel}: the notebook file link does not serve the notebook")
        if page.locator("article .math").count():
            try:
                page.locator("article mjx-container").first.wait_for(timeout=15_000)
            except sync_api.TimeoutError:
                problems.append(f"{rel}: formulas shown but not typeset by MathJax")
        if CJK.search(page.locator("article").inner_text()) and cjk_fonts() == []:
            problems.append(f"{rel}: Chinese terms but no CJK font installed (install Debian's fonts-noto-cjk)")
        if rel == pictured and figures:
            images.first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "2-lecture-with-figure.png"))
            shot = rel
    assert site.lectures, "the site has no lecture"
    assert shot, "no lecture page with a figure to photograph"
    assert not problems, "\n".join(problems)


def test_search_finds_a_lecture(page, base, site):
    page.goto(base, wait_until="load")
    page.locator("button.search-button-field, button.search-button").first.click()
    box = page.locator("input[name='q']:visible").first
    box.fill(SEARCH_TERM)
    box.press("Enter")
    page.wait_for_url(re.compile(r"search\.html\?q="), timeout=30_000)
    results = page.locator("#search-results ul.search li a")
    results.first.wait_for(timeout=30_000)
    found = {docname(h, base) for h in results.evaluate_all("as => as.map(a => a.href)")}
    teaching = {p.docname for p in site.lectures if SEARCH_TERM.lower() in (ROOT / p.rel).read_text(encoding="utf-8").lower()}
    assert teaching, f"no lecture mentions {SEARCH_TERM!r}: pick another search term"
    assert teaching & found, f"searching {SEARCH_TERM!r} found {sorted(found)}, none of the lectures that teach it {sorted(teaching)}"
    page.screenshot(path=str(ARTIFACTS / "3-search.png"))


def test_next_links_walk_the_course_in_order(page, base, site):
    page.goto(base, wait_until="domcontentloaded")
    visited = [docname(page.url, base)]
    for _ in range(len(site.pages) + 5):
        following = page.locator("a.right-next")
        if not following.count():
            break
        following.first.click()
        page.wait_for_load_state("domcontentloaded")
        visited.append(docname(page.url, base))
    assert visited == ["index", *(p.docname for p in site.pages)], f"following 'next' from the home page visited {visited}"
