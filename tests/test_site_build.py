"""The course website's build (tools/build_site.py, `make site`): what goes on the site and how.

Fast tests of the staging step (no Sphinx needed): the pages and their order come from the course
index, new lectures are picked up, launch links and the notebook link, links and remote images
rewritten, live-only outputs (Netron, widgets) replaced by notes. Then, with the docs extra installed,
the built site itself: every page there, no HTML that loads anything from another host, size within
bounds. The wiring (Makefile, CI, the Pages workflow, the README's link, the learner's install
without the site tools) is checked last. The site in a browser: tests/test_site_browser.py.
"""
from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_site  # noqa: E402
import course_index  # noqa: E402
import launch_links  # noqa: E402

REPO, BRANCH = "owner/course", "main"


def lecture_names(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


# --- pages and order ---------------------------------------------------------------------------------

def test_the_site_has_every_lecture_lab_solution_in_course_order():
    site = build_site.course(ROOT)
    assert [p.rel for p in site.lectures] == lecture_names(ROOT)
    labs = [p.rel for p in site.path if p.kind == "lab"]
    assert sorted(labs) == sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "labs").glob("lab*.ipynb"))
    assert [p.rel for p in site.solutions] == sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "solutions").glob("lab*.ipynb"))
    # each lab comes after the lecture the course index puts it with, and before the next lecture
    order = [p.rel for p in site.path]
    for row in course_index.rows(ROOT):
        links = [t for cell in row for _x, t, _y in build_site.LINK.findall(cell)]
        lecture = next((t for t in links if t.startswith("notebooks/")), None)
        for lab in (t for t in links if t.startswith("labs/")):
            if lecture:
                assert order.index(lab) == order.index(lecture) + 1 + [t for t in links if t.startswith("labs/")].index(lab)
    docs = [p.rel for p in site.docs]
    assert docs[:2] == ["docs/glossary.md", "docs/teaching.md"]
    assert set(docs) == {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}


def _notebook(title: str) -> str:
    return json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": [f"# {title}\n"]}],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture
def small_course(tmp_path):
    """A course with lectures 00, 13 and 14 (13 and 14 added after the site was written) and one lab."""
    for folder in ("notebooks", "labs", "solutions", "docs"):
        (tmp_path / folder).mkdir()
    for name, title in [("00_start", "00 · Start"), ("13_new", "13 · A new lecture"), ("14_newer", "14 · Another one")]:
        (tmp_path / "notebooks" / f"{name}.ipynb").write_text(_notebook(title))
    (tmp_path / "solutions" / "lab42_new.ipynb").write_text(_notebook("Lab 42 · New lab"))
    (tmp_path / "labs" / "lab42_new.ipynb").write_text(_notebook("Lab 42 · New lab"))
    (tmp_path / "docs" / "glossary.md").write_text("# Glossary\n\n| 中文 | English |\n|---|---|\n| 量化 | quantisation |\n")
    (tmp_path / "README.md").write_text(f"# Course\n\n{course_index.START}\n{course_index.END}\n\nSee [CONTRIBUTING](CONTRIBUTING.md).\n")
    (tmp_path / "CONTRIBUTING.md").write_text("# Contributing\n")
    return tmp_path


def test_new_lectures_are_picked_up_from_the_course_index(small_course):
    site = build_site.course(small_course)
    assert [p.rel for p in site.lectures] == ["notebooks/00_start.ipynb", "notebooks/13_new.ipynb", "notebooks/14_newer.ipynb"]
    assert [p.rel for p in site.path if p.kind == "lab"] == ["labs/lab42_new.ipynb"]
    assert [p.rel for p in site.solutions] == ["solutions/lab42_new.ipynb"]
    home = build_site.home_page((small_course / "README.md").read_text(), site, REPO, BRANCH, small_course)
    toctrees = re.findall(r"```\{toctree\}\n(.*?)```", home, re.S)
    assert [":caption: Lectures and labs" in t for t in toctrees] == [True, False, False]
    course_tree = toctrees[0].split("\n\n", 1)[1].split()
    assert course_tree == ["notebooks/00_start", "notebooks/13_new", "notebooks/14_newer", "labs/lab42_new"]
    assert "solutions/lab42_new" in toctrees[1] and "docs/glossary" in toctrees[2]


def test_staging_writes_every_page_and_removes_stale_ones(small_course, tmp_path_factory):
    stage = tmp_path_factory.mktemp("stage")
    (stage / "notebooks").mkdir()
    (stage / "notebooks" / "99_removed.ipynb").write_text("{}")
    site, changed = build_site.stage(small_course, stage, REPO, BRANCH)
    staged = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    assert staged == sorted(["index.md", *(p.rel for p in site.pages)])
    assert changed == len(staged) + 1  # every page written, the stale one removed
    _, again = build_site.stage(small_course, stage, REPO, BRANCH)
    assert again == 0, "a second staging rewrote unchanged files (Sphinx would rebuild every page)"
    assert "量化" in (stage / "docs" / "glossary.md").read_text(encoding="utf-8")


# --- links -------------------------------------------------------------------------------------------

PAGES = {"notebooks/01_a.ipynb", "notebooks/02_b.ipynb", "docs/glossary.md"}


def rewrite(text: str, source: str = "notebooks/01_a.ipynb") -> str:
    return build_site.rewrite_links(text, source, PAGES, REPO, BRANCH, ROOT)


def test_links_to_pages_stay_and_the_readme_becomes_the_home_page():
    assert rewrite("next: [02](02_b.ipynb)") == "next: [02](02_b.ipynb)"
    assert rewrite("see the [glossary](../docs/glossary.md)") == "see the [glossary](../docs/glossary.md)"
    assert rewrite("[README](../README.md#start-in-a-minute)") == "[README](../index.md#start-in-a-minute)"
    assert rewrite("[x](README.md)", source="README.md") == "[x](index.md)"


def test_links_to_other_files_of_the_repository_go_to_github():
    assert rewrite("[rules](../CONTRIBUTING.md)") == f"[rules](https://github.com/{REPO}/blob/{BRANCH}/CONTRIBUTING.md)"
    assert rewrite("[the package](../deploykit)") == f"[the package](https://github.com/{REPO}/tree/{BRANCH}/deploykit)"
    assert rewrite("[bench](deploykit/bench.py#L1)", source="README.md") == \
        f"[bench](https://github.com/{REPO}/blob/{BRANCH}/deploykit/bench.py#L1)"
    # web links, anchors and missing files are left alone (Sphinx reports a missing one)
    for text in ("[ORT](https://onnxruntime.ai/)", "[up](#summary)", "[gone](../no_such_file.md)"):
        assert rewrite(text) == text


def test_remote_images_become_text_and_code_is_untouched():
    badge = "[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/x/y/main)"
    assert rewrite(badge, source="README.md") == "[Binder](https://mybinder.org/v2/gh/x/y/main)"
    assert rewrite('<img src="https://example.com/a.png" alt="a"> text') == " text"
    code = "`y[mask](x)` and\n```python\nz = a[i](b)  # [doc](../CONTRIBUTING.md)\n```\n"
    assert rewrite(code) == code


# --- notebooks -------------------------------------------------------------------------------------

def test_launch_links_and_the_notebook_file_link():
    rel = "notebooks/05_x.ipynb"
    cells = launch_links.expected_cells(REPO, BRANCH, rel)
    nb = {"cells": [cells[0], {"cell_type": "markdown", "metadata": {}, "source": "# 05 · X"}, cells[1]], "metadata": {}}
    out = build_site.site_notebook(nb, rel, {rel}, REPO, BRANCH, ROOT)
    links = out["cells"][0]["source"]
    assert launch_links.colab_url(REPO, BRANCH, rel) in links and launch_links.binder_url(REPO, BRANCH, rel) in links
    assert 'href="05_x.ipynb" download' in links and f"https://github.com/{REPO}/blob/{BRANCH}/{rel}" in links
    assert "remove-cell" in out["cells"][2]["metadata"]["tags"], "the Colab-only setup cell should be hidden"
    assert nb["cells"][0]["source"] == cells[0]["source"], "the notebook itself must not change"
    # a notebook without launch cells gets the links on its page too
    bare = build_site.site_notebook({"cells": [nb["cells"][1]], "metadata": {}}, rel, {rel}, REPO, BRANCH, ROOT)
    assert bare["cells"][0]["source"] == links


def test_live_only_outputs_become_notes_and_others_stay():
    netron = {"output_type": "display_data", "metadata": {}, "data": {
        "text/html": ['<iframe class="deploykit-netron" src="/proxy/39795/"></iframe>',
                      '<div><a href="/proxy/39795/" target="_blank">Open resnet18.onnx in Netron in a new tab</a></div>'],
        "text/plain": ["<IPython.core.display.HTML object>"]}}
    note = build_site.site_output(netron)
    assert "resnet18.onnx" in note["data"]["text/html"] and "/proxy/" not in json.dumps(note)
    widget = {"output_type": "display_data", "metadata": {}, "data": {
        build_site.WIDGET_MIME: {"model_id": "abc", "version_major": 2, "version_minor": 0}, "text/plain": ["VBox(...)"]}}
    assert build_site.WIDGET_MIME not in build_site.site_output(widget)["data"]
    figure = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR", "text/plain": ["<Figure>"]}}
    stream = {"output_type": "stream", "name": "stdout", "text": ["[OK]\n"]}
    assert build_site.site_output(figure) == figure and build_site.site_output(stream) == stream


def test_no_committed_notebook_output_would_load_from_another_host():
    """Outputs the site shows as they are (after site_output) carry no remote src/href to load."""
    remote = re.compile(r"""<(?:img|script|iframe|link|source|video|audio)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//""", re.I)
    for page in build_site.course(ROOT).pages:
        if page.rel.endswith(".ipynb"):
            nb = json.loads((ROOT / page.rel).read_text(encoding="utf-8"))
            for cell in nb["cells"]:
                for output in cell.get("outputs", []):
                    shown = json.dumps(build_site.site_output(output).get("data", {}))
                    assert not remote.search(shown), f"{page.rel}: an output loads from another host"


# --- the built site (needs the docs extra) -----------------------------------------------------------

class Resources(HTMLParser):
    """What a page loads (not what it links to): scripts, stylesheets, images, frames, media."""

    def __init__(self):
        super().__init__()
        self.loaded: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "video", "audio", "embed") and attrs.get("src"):
            self.loaded.append(attrs["src"])
        if tag == "link" and attrs.get("href") and set((attrs.get("rel") or "").split()) & {"stylesheet", "preload", "icon", "prefetch", "preconnect", "modulepreload"}:
            self.loaded.append(attrs["href"])


@pytest.fixture(scope="module")
def built():
    pytest.importorskip("myst_nb", reason="the docs extra is not installed (make install-docs)")
    return build_site.build(quiet=True)


def test_the_built_site_has_every_page_and_loads_nothing_from_another_host(built):
    out = build_site.OUT
    for page in built.pages:
        assert (out / f"{page.docname}.html").is_file(), f"{page.rel} has no page"
        if page.rel.endswith(".ipynb"):
            assert (out / page.rel).read_bytes() == (ROOT / page.rel).read_bytes(), f"{page.rel}: the notebook file beside its page differs"
    pages = sorted(out.rglob("*.html"))
    assert len(pages) >= len(built.pages) + 1
    for html_file in pages:
        parser = Resources()
        parser.feed(html_file.read_text(encoding="utf-8"))
        remote = [url for url in parser.loaded if re.match(r"^(?:[a-z]+:)?//", url, re.I)]
        assert not remote, f"{html_file.relative_to(out)} loads from another host: {remote}"
    css_js = [p for p in (out / "_static").rglob("*") if p.suffix in (".css", ".js")]
    for path in css_js:  # fonts or imports pulled in by a stylesheet or script
        text = path.read_text(encoding="utf-8", errors="replace")
        assert not re.search(r"""@import\s+url\(\s*["']?https?://|url\(\s*["']?https?://[^)]*\.(?:woff2?|ttf|otf|css)""", text), \
            f"{path.relative_to(out)} pulls a stylesheet or font from another host"
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()


def test_the_built_site_stays_small(built):
    size, files = build_site.folder_size(build_site.OUT)
    notebooks = sum((ROOT / p.rel).stat().st_size for p in built.pages if p.rel.endswith(".ipynb"))
    # the notebooks (copied beside their pages) and their figures dominate; the theme and MathJax add ~6 MB
    assert size < 3 * notebooks + 12e6, f"the site is {size / 1e6:.1f} MB in {files} files"


# --- wiring ------------------------------------------------------------------------------------------

def test_make_site_is_wired_into_ci_and_the_pages_workflow():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^site: install-docs\n\t\$\(BIN\)/python tools/build_site\.py", makefile, re.M)
    assert re.search(r"^\$\(DOCS_STAMP\):.*\n(?:\t.*\n)*\t\$\(BIN\)/python -m pip install --quiet -r requirements-docs\.txt -c requirements-lock\.txt", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make site$", ci, re.M) and ci.index("make site") < ci.index("make test\n")
    workflow = (ROOT / ".github" / "workflows" / "pages.yml").read_text()
    assert "make site" in workflow and "path: build/site" in workflow and "actions/deploy-pages" in workflow


def test_the_learners_install_has_no_site_tools_and_the_docs_extra_is_pinned():
    learner = (ROOT / "requirements.txt").read_text().lower()
    assert not re.search(r"^(sphinx|myst)", learner, re.M)
    def name(line: str) -> str:
        return re.sub(r"[-_.]+", "-", line.split("==")[0].strip().lower())

    lock = {name(line) for line in (ROOT / "requirements-lock.txt").read_text().splitlines() if "==" in line}
    docs = [line for line in (ROOT / "requirements-docs.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert docs and all(re.fullmatch(r"[A-Za-z0-9._-]+==[\w.]+", line) for line in docs), "every docs requirement pinned with =="
    assert {"sphinx", "myst-nb", "sphinx-book-theme"} <= {name(line) for line in docs}
    assert not {name(line) for line in docs} & lock, "a docs pin that the lock already pins (it would conflict)"


def test_the_readme_links_to_the_site_in_its_first_lines():
    owner, name = launch_links.REPO.split("/")
    head = "\n".join((ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:6])
    assert f"https://{owner}.github.io/{name}/" in head
