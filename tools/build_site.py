#!/usr/bin/env python
"""Build the course website (`make site`): static HTML of the whole course, from the committed notebooks.

Nothing is executed: the lectures and solutions are committed with their outputs, and the site shows
those outputs and figures. Sphinx with myst-nb and sphinx-book-theme renders it (requirements-docs.txt,
`make install-docs`; not part of the learner's install); docs/site/ holds its configuration.

What goes in, in course order: the README as the home page, then every lecture followed by the lab(s)
that come after it, then the worked solutions, then the docs (glossary, teaching guide, the rest of
docs/*.md). The order and the pages are those of the one course index, tools/course_index.py (the
README's table): a new lecture or lab shows up on the site as soon as it is in the index.

The pages are built from a staged copy (build/site-src/), in which this tool:

* replaces each notebook's launch-links cell with the same Colab and Binder links
  (tools/launch_links.py) plus a link to the notebook file itself (copied beside the page, and on
  GitHub), and hides the Colab-only setup cell (it does nothing outside Colab);
* replaces what only a live Jupyter server can show: Netron's iframe (served by the notebook's own
  server; the static drawing that follows it stays) and ipywidgets controls (they need a kernel),
  each by a short note;
* turns links to files that are not pages into links to the file on GitHub, links to the README into
  links to the home page, and remote images (the README's Binder badge) into text: a page loads
  nothing from another host.

    python tools/build_site.py            # incremental: only changed notebooks are read again
    python tools/build_site.py --clean    # from scratch
    python tools/build_site.py --repo me/fork --out /tmp/site

The site is build/site/ (open build/site/index.html, or serve the folder); tests/test_site_*.py check it.
"""
from __future__ import annotations

import argparse
import copy
import html
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import course_index  # noqa: E402  (tools/ is not a package)
import launch_links  # noqa: E402

CONF_DIR = ROOT / "docs" / "site"
BUILD = ROOT / "build"
STAGE = BUILD / "site-src"
OUT = BUILD / "site"
DOCTREES = BUILD / "site-doctrees"
FIRST_DOCS = ("docs/glossary.md", "docs/teaching.md")  # then the other docs/*.md, by name
NOTEBOOK_FOLDERS = ("notebooks", "labs", "solutions")
KIND = {"notebooks": "lecture", "labs": "lab", "solutions": "solution", "docs": "doc"}
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
LINK = re.compile(r"\[([^\]\n]*)\]\(([^)\s]+)(\s+\"[^\"\n]*\")?\)")
REMOTE_IMAGE = re.compile(r"!\[([^\]\n]*)\]\((?:https?:)?//[^)\s]+(?:\s+\"[^\"\n]*\")?\)")
REMOTE_HTML_IMAGE = re.compile(r"<img\b[^>]*\bsrc=[\"'](?:https?:)?//[^>]*>", re.I)
CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]*`)", re.S)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
NETRON_NAME = re.compile(r"Open (.+?) in Netron")


@dataclass(frozen=True)
class Page:
    rel: str  # the file's path in the repository, e.g. "notebooks/01_deployment_pipeline.ipynb"
    kind: str  # lecture, lab, solution or doc

    @property
    def docname(self) -> str:
        return posixpath.splitext(self.rel)[0]


@dataclass
class Course:
    path: list[Page]  # lectures, each followed by its lab(s): the course in order
    solutions: list[Page]
    docs: list[Page]

    @property
    def pages(self) -> list[Page]:
        return [*self.path, *self.solutions, *self.docs]

    @property
    def lectures(self) -> list[Page]:
        return [p for p in self.path if p.kind == "lecture"]


def course(root: Path = ROOT) -> Course:
    """The site's pages, in the order of the course index (tools/course_index.py): each row's lecture,
    then its lab(s); the solutions in the same order; then the docs."""
    path, solutions, seen = [], [], set()
    for row in course_index.rows(root):
        for cell in row:
            for _text, target, _title in LINK.findall(cell):
                folder = target.split("/", 1)[0]
                if folder not in NOTEBOOK_FOLDERS or target in seen or not (root / target).is_file():
                    continue
                seen.add(target)
                page = Page(target, KIND[folder])
                (solutions if page.kind == "solution" else path).append(page)
    docs = [d for d in FIRST_DOCS if (root / d).is_file()]
    docs += sorted(p.relative_to(root).as_posix() for p in (root / "docs").glob("*.md") if p.relative_to(root).as_posix() not in docs)
    return Course(path, solutions, [Page(d, "doc") for d in docs])


# --- links ---------------------------------------------------------------------------------------

def github_url(repo: str, branch: str, rel: str, folder: bool = False) -> str:
    return f"https://github.com/{repo}/{'tree' if folder else 'blob'}/{branch}/{rel}"


def _outside_code(text: str, edit) -> str:
    """Apply ``edit`` to the parts of a markdown text that are not code (fences or inline spans)."""
    parts = CODE.split(text)
    return "".join(part if i % 2 else edit(part) for i, part in enumerate(parts))


def rewrite_links(text: str, source_rel: str, pages: set[str], repo: str, branch: str, root: Path = ROOT) -> str:
    """Markdown of ``source_rel`` (a repository path) as it must read on the site: links to pages stay
    (relative), the README becomes the home page, other files of the repository link to GitHub,
    remote images become their alt text."""
    source_dir = posixpath.dirname(source_rel)

    def link(match: re.Match) -> str:
        text_, target, title = match.group(1), match.group(2), match.group(3) or ""
        if SCHEME.match(target) or target.startswith(("#", "//")):
            return match.group(0)
        path, hash_, anchor = target.partition("#")
        if not path:
            return match.group(0)
        resolved = posixpath.normpath(posixpath.join(source_dir, path))
        if resolved == "README.md":
            home = posixpath.relpath("index.md", source_dir or ".")
            return f"[{text_}]({home}{hash_}{anchor}{title})"
        if resolved in pages:
            return match.group(0)
        if resolved.startswith("..") or not (root / resolved).exists():
            return match.group(0)  # Sphinx reports it
        url = github_url(repo, branch, resolved, folder=(root / resolved).is_dir())
        return f"[{text_}]({url}{hash_}{anchor}{title})"

    def edit(part: str) -> str:
        part = REMOTE_IMAGE.sub(lambda m: m.group(1), part)
        part = REMOTE_HTML_IMAGE.sub("", part)
        return LINK.sub(link, part)

    return _outside_code(text, edit)


def launch_markdown(rel: str, repo: str, branch: str) -> str:
    """The page's launch links: the notebook's own Colab and Binder links, and the notebook file."""
    name = posixpath.basename(rel)
    return (f"**Run it online:** [Open in Colab]({launch_links.colab_url(repo, branch, rel)}) · "
            f"[Open in Binder]({launch_links.binder_url(repo, branch, rel)}) · "
            f'**The notebook:** <a class="site-notebook-file" href="{html.escape(name)}" download>{html.escape(name)}</a> '
            f"([on GitHub]({github_url(repo, branch, rel)}))")


# --- notebooks -----------------------------------------------------------------------------------

def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _note(text: str) -> dict:
    return {"text/html": f'<p class="site-note">{html.escape(text)}</p>', "text/plain": text}


def site_output(output: dict) -> dict:
    """An output as the site shows it: what needs a live Jupyter server becomes a note."""
    data = output.get("data", {})
    page_html = "".join(data.get("text/html", "")) if isinstance(data.get("text/html"), list) else data.get("text/html", "")
    if "deploykit-netron" in page_html:
        found = NETRON_NAME.search(page_html)
        model = html.unescape(found.group(1)) if found else "the model"
        text = (f"Netron's interactive view of {model} appears here when the notebook runs (Netron is served by "
                "the notebook's Jupyter server); the static drawing below shows the same graph.")
        return {**output, "data": _note(text), "metadata": {}}
    if WIDGET_MIME in data:
        text = ("An interactive control (ipywidgets) appears here when the notebook runs in Jupyter: "
                "open the notebook (Colab, Binder or your own clone) to use it.")
        return {**output, "data": _note(text), "metadata": {}}
    return output


def site_notebook(nb: dict, rel: str, pages: set[str], repo: str, branch: str, root: Path = ROOT) -> dict:
    nb = copy.deepcopy(nb)
    nb.get("metadata", {}).pop("widgets", None)
    has_links = False
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).get("tags", [])
        if launch_links.LINKS_TAG in tags:
            cell["source"] = launch_markdown(rel, repo, branch)
            has_links = True
        elif launch_links.SETUP_TAG in tags:
            cell["metadata"]["tags"] = [*tags, "remove-cell"]  # Colab only: does nothing anywhere else
        elif cell["cell_type"] == "markdown":
            cell["source"] = rewrite_links(_source(cell), rel, pages, repo, branch, root)
        if cell["cell_type"] == "code":
            cell["outputs"] = [site_output(o) for o in cell.get("outputs", [])]
    if not has_links:  # a notebook without launch cells still gets them on its page
        nb["cells"].insert(0, {"cell_type": "markdown", "metadata": {}, "source": launch_markdown(rel, repo, branch)})
    return nb


# --- the home page -------------------------------------------------------------------------------

def toctree(caption: str, pages: list[Page], source_dir: str = "") -> str:
    entries = "\n".join(posixpath.relpath(p.docname, source_dir or ".") for p in pages)
    return f"```{{toctree}}\n:hidden:\n:caption: {caption}\n\n{entries}\n```\n"


def home_page(readme: str, site: Course, repo: str, branch: str, root: Path = ROOT) -> str:
    pages = {p.rel for p in site.pages}
    text = rewrite_links(readme, "README.md", pages, repo, branch, root)
    return (text.rstrip("\n") + "\n\n" + toctree("Lectures and labs", site.path) + "\n"
            + toctree("Worked solutions", site.solutions) + "\n" + toctree("Reference", site.docs))


# --- staging and building ------------------------------------------------------------------------

def _write_if_changed(path: Path, text: str) -> bool:
    """Write only when the content differs, so Sphinx rebuilds only what changed."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def stage(root: Path, stage_dir: Path, repo: str, branch: str) -> tuple[Course, int]:
    """Write the site's sources into ``stage_dir``; returns the course and how many files changed."""
    site = course(root)
    pages = {p.rel for p in site.pages}
    wanted = {"index.md": home_page((root / "README.md").read_text(encoding="utf-8"), site, repo, branch, root)}
    for page in site.pages:
        text = (root / page.rel).read_text(encoding="utf-8")
        if page.rel.endswith(".ipynb"):
            nb = site_notebook(json.loads(text), page.rel, pages, repo, branch, root)
            wanted[page.rel] = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        else:
            wanted[page.rel] = rewrite_links(text, page.rel, pages, repo, branch, root)
    changed = sum(_write_if_changed(stage_dir / rel, text) for rel, text in wanted.items())
    for old in [p for p in stage_dir.rglob("*") if p.is_file()]:
        if old.relative_to(stage_dir).as_posix() not in wanted:
            old.unlink()
            changed += 1
    return site, changed


def prune(out: Path) -> None:
    """Drop what no page loads: source maps of the theme's bundles (for its developers' debuggers) and
    the theme's translations of its own labels (compiled into the pages at build time)."""
    for path in (out / "_static").rglob("*.map"):
        path.unlink()
    shutil.rmtree(out / "_static" / "locales", ignore_errors=True)


def folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def build(root: Path = ROOT, out: Path = OUT, repo: str | None = None, branch: str = launch_links.BRANCH,
          clean: bool = False, quiet: bool = False) -> Course:
    """Stage the sources and run Sphinx; raises RuntimeError (with Sphinx's messages) if it fails or warns."""
    repo = repo or launch_links.default_repo(root)
    stage_dir, doctrees = BUILD / "site-src", BUILD / "site-doctrees"
    if out != OUT:  # a build elsewhere keeps its own sources and cache beside it
        stage_dir, doctrees = out.parent / f"{out.name}-src", out.parent / f"{out.name}-doctrees"
    if clean:
        for folder in (out, stage_dir, doctrees):
            shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    site, changed = stage(root, stage_dir, repo, branch)
    env = {**os.environ, "SITE_REPO": repo, "SITE_BRANCH": branch, "PYTHONHASHSEED": "0"}
    # -a: write every page even when only one changed. Each page carries the whole navigation (the sidebar,
    # "previous" and "next"), which Sphinx recomputes only for the pages it writes: without -a, a new lecture
    # or a changed title would leave the other pages pointing around it. Reading stays incremental.
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-a", "-q", "-j", "auto", "-c", str(CONF_DIR),
               "-d", str(doctrees), str(stage_dir), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    messages = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or "WARNING" in messages or "ERROR" in messages:
        raise RuntimeError(f"sphinx-build failed (exit {result.returncode}):\n{messages}")
    prune(out)
    for page in site.pages:  # the notebook files themselves, beside their pages (the "notebook" link)
        if page.rel.endswith(".ipynb"):
            target = out / page.rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / page.rel, target)
    (out / ".nojekyll").write_text("")  # GitHub Pages: serve _static/ as it is
    if not quiet:
        size, files = folder_size(out)
        print(f"site: {out.relative_to(root) if out.is_relative_to(root) else out}/index.html: "
              f"{len(site.lectures)} lectures, {len(site.path) - len(site.lectures)} labs, {len(site.solutions)} solutions, "
              f"{len(site.docs)} docs; {changed} source file(s) changed; built in {time.monotonic() - started:.1f} s; "
              f"{size / 1e6:.1f} MB in {files} files")
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", action="store_true", help="rebuild every page (default: only what changed)")
    parser.add_argument("--out", type=Path, default=OUT, help="the site's folder (default: build/site)")
    parser.add_argument("--repo", help="GitHub owner/name the launch links point to (default: as tools/launch_links.py)")
    parser.add_argument("--branch", default=launch_links.BRANCH)
    args = parser.parse_args(argv)
    try:
        build(ROOT, args.out.resolve(), args.repo, args.branch, clean=args.clean)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
