#!/usr/bin/env python
"""Put "Open in Colab" / "Open in Binder" links at the top of every notebook of the course.

Each lecture (``notebooks/``), solution (``solutions/``) and so lab (``labs/``) gets two cells,
recognised by their tags, so a rerun replaces them in place instead of adding more:

* ``launch-links`` (markdown, the first cell): two plain links to *this* notebook on Colab and on
  Binder. Text, not badge images: an image would be fetched from Google's and mybinder.org's
  servers every time the notebook is shown, and shown broken offline; the notebook loads nothing
  from other hosts (the browser test fails on any such request);
* ``colab-setup`` (code, just before the first code cell, so after the title and goals): on Colab
  only, clones the course, installs its pinned packages and moves into the notebook's folder.
  Anywhere else it does nothing and prints nothing, so the strict ``pytest --nbval`` comparison
  sees an empty output.

Nothing else in a notebook changes: the file is edited as JSON and written back in the exact
layout nbformat uses, and a notebook whose cells are already current is not written at all (a
second run changes no byte). The README's Binder badge (the line after ``<!-- binder-badge -->``)
is kept pointing at the same repository.

    python tools/launch_links.py && python tools/make_labs.py   # add or refresh the links
    python tools/launch_links.py --check         # exit 1 if any notebook lacks current links (CI)
    python tools/launch_links.py --repo me/fork  # link to another GitHub repository

The repository is ``--repo``, else the GitHub ``owner/name`` of ``git remote origin``, else
:data:`REPO`. This tool writes lectures and solutions; labs are generated from solutions by
``tools/make_labs.py``, which calls :func:`retarget` so that a lab's links point at the lab, not
at its solution. ``--check`` covers all three folders.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = "model-deployment-course/model-deployment-course"  # the course's GitHub slug (owner/name)
BRANCH = "main"
FOLDERS = ("notebooks", "labs", "solutions")
GENERATED = "labs"  # written by tools/make_labs.py (which keeps their links, see retarget), only checked here
WRITTEN = tuple(folder for folder in FOLDERS if folder != GENERATED)
LINKS_TAG, SETUP_TAG = "launch-links", "colab-setup"
README_MARKER = "<!-- binder-badge -->"
CLONE_DIR = "/content/model-deployment-course"
BINDER_BADGE = "https://mybinder.org/badge_logo.svg"  # the README's badge only (GitHub serves images through its own proxy)
COLAB_URL = re.compile(r"https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/([^/\s)]+)/")
GITHUB_REMOTE = re.compile(r"^(?:https://(?:[^@/]+@)?github\.com/|git@github\.com:|ssh://git@github\.com/)([\w.-]+/[\w.-]+?)(?:\.git)?/?$")


class LaunchLinksError(Exception):
    """A notebook this tool cannot edit without changing more than its launch cells."""


def github_slug(url: str) -> str | None:
    """``owner/name`` of a GitHub remote URL (https or ssh), None for anything else."""
    match = GITHUB_REMOTE.match(url.strip())
    return match.group(1) if match else None


def default_repo(root: Path = ROOT) -> str:
    """The GitHub ``owner/name`` of ``git remote origin`` if it is on GitHub, else :data:`REPO`."""
    try:
        url = subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return REPO
    return github_slug(url) or REPO


def colab_url(repo: str, branch: str, rel: str) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/{rel}"


def binder_url(repo: str, branch: str, rel: str) -> str:
    return f"https://mybinder.org/v2/gh/{repo}/{branch}?urlpath=lab/tree/{rel}"


def links_source(repo: str, branch: str, rel: str) -> str:
    return f"**Run it online:** [Open in Colab]({colab_url(repo, branch, rel)}) · [Open in Binder]({binder_url(repo, branch, rel)})"


# Not installed on Colab: its own Jupyter server and kernel stay as Colab ships them; test tools are not needed.
COLAB_SKIP = ("jupyterlab", "ipykernel", "jupyter-server-proxy", "pytest", "nbval", "nbformat", "nbclient", "playwright")


def setup_source(repo: str, branch: str, rel: str) -> str:
    folder = Path(rel).parent.as_posix()
    skip = ", ".join(f'"{name}"' for name in COLAB_SKIP)
    return f'''# Colab only: fetch the course and install its pinned packages. Elsewhere this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import os, subprocess
    course = "{CLONE_DIR}"
    if not os.path.isdir(course):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{branch}", "https://github.com/{repo}.git", course], check=True)
    keep_colab_own = ({skip})
    with open(f"{{course}}/requirements.txt") as file:
        pins = [line.strip() for line in file if "==" in line and line.split("==")[0].strip() not in keep_colab_own]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pins], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", course], check=True)
    sys.path.insert(0, course)  # import deploykit without a restart
    os.chdir(f"{{course}}/{folder}")
    print("Course installed. If Colab asks you to restart the session, restart, then run from the top.")'''


def _lines(source: str) -> list[str]:
    """A cell source the way nbformat stores it: a list of lines, each but the last ending in a newline."""
    return source.splitlines(True)


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def expected_cells(repo: str, branch: str, rel: str) -> list[dict]:
    links = {"cell_type": "markdown", "metadata": {"tags": [LINKS_TAG]}, "source": _lines(links_source(repo, branch, rel))}
    setup = {"cell_type": "code", "execution_count": None, "metadata": {"tags": [SETUP_TAG]}, "outputs": [],
             "source": _lines(setup_source(repo, branch, rel))}
    return [links, setup]


def is_current(cell: dict, expected: dict) -> bool:
    """Same type, source and tag, and (code) no outputs. The execution count and the id may differ:
    a notebook executed after the links were added is still current."""
    return (cell.get("cell_type") == expected["cell_type"] and _source(cell) == _source(expected)
            and set(_tags(expected)) <= set(_tags(cell)) and not cell.get("outputs"))


def update_notebook(nb: dict, rel: str, repo: str, branch: str = BRANCH) -> bool:
    """Make ``nb`` (a notebook as a JSON dict) start with current launch cells for ``rel``; True if changed.

    Tagged cells are replaced where they are (keeping their ids); a missing links cell is inserted
    at the top, a missing setup cell just before the first code cell; duplicates are removed.
    """
    cells = nb["cells"]
    use_ids = (nb.get("nbformat"), nb.get("nbformat_minor", 0)) >= (4, 5)
    expected_pair = expected_cells(repo, branch, rel)
    if type(nb).__name__ == "NotebookNode":  # in memory, nbformat keeps sources as strings
        import nbformat

        expected_pair = [nbformat.from_dict({**cell, "source": _source(cell)}) for cell in expected_pair]
    changed = False
    for tag, expected in zip((LINKS_TAG, SETUP_TAG), expected_pair):
        found = [i for i, cell in enumerate(cells) if tag in _tags(cell)]
        for duplicate in reversed(found[1:]):
            del cells[duplicate]
            changed = True
        if found:
            index = found[0]
            if not is_current(cells[index], expected):
                replacement = copy.deepcopy(expected)
                if use_ids:
                    replacement["id"] = cells[index].get("id") or _free_id(cells, tag)
                cells[index] = replacement
                changed = True
        else:
            new = copy.deepcopy(expected)
            if use_ids:
                new["id"] = _free_id(cells, tag)
            if tag == LINKS_TAG:  # the launch links open the notebook, above its title
                position = 0
            else:  # the setup runs first: just before the first code cell, after the title and goals
                position = next((i for i, cell in enumerate(cells) if cell.get("cell_type") == "code"), len(cells))
            cells.insert(position, new)
            changed = True
    return changed


def _free_id(cells: list[dict], base: str) -> str:
    taken = {cell.get("id") for cell in cells}
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def current_target(nb: dict) -> tuple[str, str] | None:
    """``(repo, branch)`` that the notebook's launch links point to, or None if it has none."""
    for cell in nb.get("cells", []):
        if LINKS_TAG in _tags(cell):
            match = COLAB_URL.search(_source(cell))
            if match:
                return match.group(1), match.group(2)
    return None


def retarget(nb, rel: str) -> bool:
    """Point existing launch cells at ``rel`` (same repository and branch); no-op without them.

    For ``tools/make_labs.py``: a lab copies its solution's cells, so its links must be rewritten to
    the lab's own path. Works on a plain dict or an nbformat ``NotebookNode``.
    """
    target = current_target(nb)
    if target is None:
        return False
    return update_notebook(nb, rel, *target)


def dumps(nb: dict) -> str:
    """Exactly the text nbformat writes (indent 1, sorted keys, UTF-8 as is, final newline)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def load(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    if dumps(nb) != text:
        raise LaunchLinksError(f"{path.name}: not in nbformat's JSON layout, so rewriting it would change more than "
                               f"its launch cells; save it once with nbformat (e.g. tools/execute_notebooks.py) first")
    return nb, text


def readme_badge(repo: str, branch: str) -> str:
    return f"[![Binder]({BINDER_BADGE})]({binder_url(repo, branch, 'notebooks/00_setup_check.ipynb')})"


def update_readme(text: str, repo: str, branch: str = BRANCH) -> str:
    """Rewrite the badge line after ``<!-- binder-badge -->`` (insert it if missing)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.strip() == README_MARKER:
            badge = readme_badge(repo, branch)
            if i + 1 < len(lines) and lines[i + 1].startswith("[![Binder]"):
                lines[i + 1] = badge
            else:
                lines.insert(i + 1, badge)
            return "\n".join(lines)
    return text


def notebook_paths(root: Path, folders=FOLDERS) -> list[Path]:
    return [p for folder in folders for p in sorted((root / folder).glob("*.ipynb"))]


def run(root: Path, repo: str, branch: str = BRANCH, check: bool = False, paths: list[Path] | None = None,
        readme: bool = True) -> list[str]:
    """Update (or, with ``check``, only inspect) the notebooks and the README; return what was stale."""
    stale = []
    for path in paths if paths is not None else notebook_paths(root, FOLDERS if check else WRITTEN):
        rel = path.resolve().relative_to(root.resolve()).as_posix()
        if not check and rel.startswith(f"{GENERATED}/"):
            raise LaunchLinksError(f"{rel}: labs are generated; add links to its solution, then run tools/make_labs.py")
        nb, text = load(path)
        if update_notebook(nb, rel, repo, branch):
            stale.append(rel)
            if not check:
                path.write_text(dumps(nb), encoding="utf-8")
    readme_path = root / "README.md"
    if readme and readme_path.exists():
        text = readme_path.read_text(encoding="utf-8")
        new = update_readme(text, repo, branch)
        if new != text:
            stale.append("README.md")
            if not check:
                readme_path.write_text(new, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path,
                        help="notebooks to process (default: notebooks/ and solutions/; with --check, labs/ too)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any notebook lacks current links")
    parser.add_argument("--repo", help=f"GitHub owner/name (default: git remote origin if on GitHub, else {REPO})")
    parser.add_argument("--branch", default=BRANCH, help=f"branch the links open (default: {BRANCH})")
    parser.add_argument("--root", type=Path, default=ROOT, help="the course folder (default: this checkout)")
    args = parser.parse_args(argv)
    repo = args.repo or default_repo(args.root)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        parser.error(f"--repo expected GitHub owner/name, got {repo!r}")
    try:
        stale = run(args.root, repo, args.branch, check=args.check, paths=[p.resolve() for p in args.paths] or None,
                    readme=not args.paths)
    except LaunchLinksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for rel in stale:
        print(f"{'stale' if args.check else 'updated'}  {rel}")
    if args.check:
        print(f"launch links are current ({repo}, {args.branch})" if not stale else
              f"{len(stale)} file(s) lack current launch links; run: python tools/launch_links.py --repo {repo} "
              f"&& python tools/make_labs.py")
        return 1 if stale else 0
    print(f"launch links: {len(stale)} file(s) updated ({repo}, {args.branch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
