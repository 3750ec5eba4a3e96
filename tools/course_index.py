#!/usr/bin/env python
"""Write the course index (the README's table of lectures, labs and solutions) from the files.

One row per lecture (``notebooks/NN_*.ipynb``), in order: its number, its topic (the notebook's
first markdown heading, without the leading ``NN ·``), a link to it, and the lab that follows it
(``labs/labNN_*.ipynb``, titled by its own heading) with a link to its worked solution
(``solutions/``). The table goes between ``<!-- course-index:start -->`` and
``<!-- course-index:end -->`` in README.md; nothing else in the README changes.

    python tools/course_index.py           # rewrite the table
    python tools/course_index.py --check   # exit 1 if the table does not match the files (CI)

Which lecture a lab follows is :data:`LAB_AFTER_LECTURE` (the syllabus's "after notebook"
column). A lab missing from it, or whose lecture does not exist, gets a row of its own after the
lectures, so nothing is ever left out of the index.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- course-index:start -->", "<!-- course-index:end -->"
HEADER = ["#", "topic", "lecture", "lab", "solution"]
# lab number -> the lecture it comes after (SYLLABUS.md: "after notebook").
LAB_AFTER_LECTURE = {"01": "02", "02": "03", "03": "04", "04": "06", "05": "07", "06": "08", "07": "09", "08": "10", "09": "11"}
LECTURE_NAME = re.compile(r"^(\d\d)_\w+\.ipynb$")
LAB_NAME = re.compile(r"^lab(\d\d)_\w+\.ipynb$")
HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.M)
NUMBER_PREFIX = re.compile(r"^(?:lab\s*)?\d\d\s*[·:.\-–—]\s*", re.I)


class IndexError_(Exception):
    """README.md lacks the index markers."""


def title(path: Path) -> str | None:
    """The notebook's first level-1 markdown heading (None if it has none)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        match = HEADING.search("".join(source) if isinstance(source, list) else source)
        if match:
            return match.group(1).strip()
    return None


def topic(path: Path) -> str:
    """The title without its ``NN ·`` / ``Lab NN ·`` prefix, or a readable file name if untitled."""
    heading = title(path)
    if not heading:
        return path.stem.split("_", 1)[-1].replace("_", " ").capitalize()
    return NUMBER_PREFIX.sub("", heading)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _link(text: str, path: Path, root: Path) -> str:
    return f"[{_cell(text)}]({path.relative_to(root).as_posix()})"


def _row(cells: list[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def rows(root: Path = ROOT) -> list[list[str]]:
    lectures = {LECTURE_NAME.match(p.name).group(1): p for p in sorted((root / "notebooks").glob("*.ipynb"))
                if LECTURE_NAME.match(p.name)}
    # A lab is known by its solution (the source) or by its generated lab file.
    labs: dict[str, dict[str, Path]] = {}
    for kind in ("solutions", "labs"):
        for path in sorted((root / kind).glob("*.ipynb")):
            match = LAB_NAME.match(path.name)
            if match:
                labs.setdefault(match.group(1), {})[kind] = path

    def lab_cells(number: str) -> tuple[str, str]:
        found = labs[number]
        lab, solution = found.get("labs"), found.get("solutions")
        name = topic(lab or solution)
        lab_text = _link(f"Lab {number}: {name}", lab, root) if lab else f"Lab {number}: {_cell(name)} (run `make labs`)"
        return lab_text, _link("solution", solution, root) if solution else ""

    placed: set[str] = set()
    table = []
    for number, lecture in lectures.items():
        following = sorted(n for n in labs if LAB_AFTER_LECTURE.get(n) == number)
        placed.update(following)
        pairs = [lab_cells(n) for n in following]
        table.append([number, _cell(topic(lecture)), _link(lecture.stem, lecture, root),
                      "<br>".join(p[0] for p in pairs), "<br>".join(p[1] for p in pairs if p[1])])
    for number in sorted(set(labs) - placed):
        lab_text, solution_text = lab_cells(number)
        table.append([f"lab {number}", "", "", lab_text, solution_text])
    return table


def render(root: Path = ROOT) -> str:
    lines = [_row(HEADER), "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += [_row(row) for row in rows(root)]
    return "\n".join(lines)


def split_readme(text: str) -> tuple[str, str, str]:
    """(before the table, the table, after it); raises if the markers are missing or out of order."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise IndexError_(f"README.md needs the markers {START} and {END} (in this order) around the course index")
    head = text[: start + len(START)]
    return head, text[len(head):end].strip("\n"), text[end:]


def updated_readme(text: str, root: Path = ROOT) -> str:
    head, _, tail = split_readme(text)
    return f"{head}\n{render(root)}\n{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the README's index is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the course folder (default: this checkout)")
    args = parser.parse_args(argv)
    readme = args.root / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
        new = updated_readme(text, args.root)
    except (OSError, IndexError_) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print("README.md: the course index is stale; run: python tools/course_index.py")
            return 1
        print("README.md: the course index matches the notebooks")
        return 0
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"README.md: course index rewritten ({len(rows(args.root))} rows)")
    else:
        print("README.md: course index already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
