"""Sphinx configuration of the course website. Built by tools/build_site.py (`make site`), never by hand.

The build reads a staged copy of the course (build/site-src/: the README as index.md, the committed
notebooks with their outputs, the docs), written by tools/build_site.py, which also passes the
repository slug and the branch the launch links point to (SITE_REPO, SITE_BRANCH). Nothing is executed
(nb_execution_mode = "off") and nothing is fetched: no CDN for MathJax (its files come from the
sphinx-mathjax-offline wheel and are served from the site's own _static/), no ipywidgets JavaScript
from unpkg, no web fonts. The browser test (tests/test_site_browser.py) fails on any off-machine request.
"""
from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = os.environ.get("SITE_REPO", "model-deployment-course/model-deployment-course")
BRANCH = os.environ.get("SITE_BRANCH", "main")

project = "Model Deployment, from PyTorch to ONNX Runtime and LiteRT"
author = "the course authors"
copyright = "the course authors"
language = "en"
root_doc = "index"

extensions = ["myst_nb"]

# The notebooks are committed executed: render their outputs, never run them.
nb_execution_mode = "off"
nb_merge_streams = True
# ipywidgets need a live kernel; their JavaScript would come from a CDN. tools/build_site.py puts a
# note in place of each widget, so no widget script is needed (and none is fetched).
nb_ipywidgets_js = {}
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3  # the README's "see *Which CPUs and Pythons*" anchors
suppress_warnings = ["myst.header"]

exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = []

html_theme = "sphinx_book_theme"
html_title = "Model Deployment course"
html_static_path = [str(HERE / "_static")]
html_css_files = ["course.css"]
html_favicon = str(HERE / "_static" / "favicon.svg")  # else every browser asks the server for /favicon.ico
html_copy_source = False  # the notebooks themselves are copied beside their pages instead
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    "repository_url": f"https://github.com/{REPO}",
    "repository_branch": BRANCH,
    "use_repository_button": True,
    "use_download_button": False,
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "search_bar_text": "Search the course...",
}

# MathJax 3 from the site itself (lecture 07's quantisation formula): only the parts a page loads
# (the tex-chtml component, its fonts and the TeX extensions it may autoload), not the wheel's 24 MB.
mathjax_path = "mathjax/tex-chtml.js"
MATHJAX_PARTS = ("tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions")


def mathjax_source() -> Path:
    dist = metadata.distribution("sphinx-mathjax-offline")
    return Path(dist.locate_file("sphinx-mathjax-offline/static/mathjax"))


def copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    source, target = mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        src, dst = source / part, target / part
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def setup(app):
    app.connect("build-finished", copy_mathjax)
