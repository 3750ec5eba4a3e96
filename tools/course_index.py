#!/usr/bin/env python
"""Write every course map (README index, notebook 00's map, docs/teaching.md's timetable) from the files.

One row per lecture (``notebooks/NN_*.ipynb``), in order: its number, its topic (the notebook's
first markdown heading, without the leading ``NN ·``), a link to it, and the lab that follows it
(``labs/labNN_*.ipynb``, titled by its own heading) with a link to its worked solution
(``solutions/``). The table goes between ``<!-- course-index:start -->`` and
``<!-- course-index:end -->`` in README.md; nothing else in the README changes.

    python tools/course_index.py           # rewrite the table
    python tools/course_index.py --check   # exit 1 if the table does not match the files (CI)

The same rows feed the other maps, each between its own markers (:data:`MAPS`): notebook 00's course
map (``<!-- course-map:start -->``, links relative to ``notebooks/``) and the timetable in
docs/teaching.md (``<!-- course-timetable:start -->``: one session per lecture with its labs, a
lecture without a lab joining the session before it, with the minutes each notebook states). A new
notebook appears in all of them on the next run; ``tests/test_course_index.py`` fails until it does.

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
LAB_AFTER_LECTURE = {"01": "02", "02": "03", "03": "04", "04": "06", "05": "07", "06": "08", "07": "09", "08": "10", "09": "11", "10": "13"}
LECTURE_NAME = re.compile(r"^(\d\d)_\w+\.ipynb$")
LAB_NAME = re.compile(r"^lab(\d\d)_\w+\.ipynb$")
HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.M)
NUMBER_PREFIX = re.compile(r"^(?:lab\s*)?\d\d\s*[·:.\-–—]\s*", re.I)


TIME = re.compile(r"\*\*Time:\*\*\s*about\s+(\d+)\s+minutes")


class IndexError_(Exception):
    """A map's file lacks its markers."""


def minutes(path: Path) -> int | None:
    """The reading and working time the notebook states ("**Time:** about N minutes"), or None."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            match = TIME.search("".join(source) if isinstance(source, list) else source)
            if match:
                return int(match.group(1))
    return None


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


def course(root: Path = ROOT) -> tuple[dict[str, Path], dict[str, dict[str, Path]]]:
    """({lecture number: notebook}, {lab number: {"solutions"|"labs": path}}) from the files."""
    lectures = {LECTURE_NAME.match(p.name).group(1): p for p in sorted((root / "notebooks").glob("*.ipynb"))
                if LECTURE_NAME.match(p.name)}
    # A lab is known by its solution (the source) or by its generated lab file.
    labs: dict[str, dict[str, Path]] = {}
    for kind in ("solutions", "labs"):
        for path in sorted((root / kind).glob("*.ipynb")):
            match = LAB_NAME.match(path.name)
            if match:
                labs.setdefault(match.group(1), {})[kind] = path
    return lectures, labs


def labs_after(lectures: dict[str, Path], labs: dict) -> tuple[dict[str, list[str]], list[str]]:
    """({lecture: [labs that follow it]}, [labs that follow no existing lecture])."""
    after = {number: sorted(n for n in labs if LAB_AFTER_LECTURE.get(n) == number) for number in lectures}
    placed = {n for following in after.values() for n in following}
    return after, sorted(set(labs) - placed)


def rows(root: Path = ROOT) -> list[list[str]]:
    lectures, labs = course(root)

    def lab_cells(number: str) -> tuple[str, str]:
        found = labs[number]
        lab, solution = found.get("labs"), found.get("solutions")
        name = topic(lab or solution)
        lab_text = _link(f"Lab {number}: {name}", lab, root) if lab else f"Lab {number}: {_cell(name)} (run `make labs`)"
        return lab_text, _link("solution", solution, root) if solution else ""

    after, orphans = labs_after(lectures, labs)
    table = []
    for number, lecture in lectures.items():
        pairs = [lab_cells(n) for n in after[number]]
        table.append([number, _cell(topic(lecture)), _link(lecture.stem, lecture, root),
                      "<br>".join(p[0] for p in pairs), "<br>".join(p[1] for p in pairs if p[1])])
    for number in orphans:
        lab_text, solution_text = lab_cells(number)
        table.append([f"lab {number}", "", "", lab_text, solution_text])
    return table


def render(root: Path = ROOT) -> str:
    lines = [_row(HEADER), "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += [_row(row) for row in rows(root)]
    return "\n".join(lines)


def _short(text: str) -> str:
    return _cell(text.split(":")[0].strip())


def _lab_path(found: dict[str, Path]) -> Path:
    return found.get("labs") or found["solutions"]


def render_notebook_map(root: Path = ROOT) -> str:
    """Notebook 00's course map: every lecture and the labs after it, links relative to notebooks/."""
    lectures, labs = course(root)
    after, orphans = labs_after(lectures, labs)
    lines = ["| lecture | then the lab |", "|---|---|"]

    def lab_links(numbers):
        return "<br>".join(f"[Lab {n}: {_short(topic(_lab_path(labs[n])))}](../{_lab_path(labs[n]).relative_to(root).as_posix()})"
                           for n in numbers)

    for number, lecture in lectures.items():
        lines.append(_row([f"[{number} · {_short(topic(lecture))}]({lecture.name})", lab_links(after[number])]))
    for number in orphans:
        lines.append(_row(["", lab_links([number])]))
    return "\n".join(lines)


def sessions(root: Path = ROOT) -> list[tuple[list[str], list[str]]]:
    """[(lecture numbers, lab numbers)] per class session: each lecture with the labs that follow it;
    a lecture no lab follows joins the session before it; labs that follow no lecture come last."""
    lectures, labs = course(root)
    after, orphans = labs_after(lectures, labs)
    out: list[tuple[list[str], list[str]]] = []
    for number in lectures:
        if out and not after[number]:
            out[-1][0].append(number)
        else:
            out.append(([number], list(after[number])))
    if orphans:
        out.append(([], orphans))
    return out


def render_timetable(root: Path = ROOT) -> str:
    """docs/teaching.md's timetable: sessions, their lectures and labs, and the minutes they state."""
    lectures, labs = course(root)
    lines = ["| session | lecture | lab | minutes (as the notebooks state) |", "|---|---|---|---:|"]
    for index, (lecture_numbers, lab_numbers) in enumerate(sessions(root), start=1):
        stated = [minutes(lectures[n]) for n in lecture_numbers] + [minutes(_lab_path(labs[n])) for n in lab_numbers]
        total = str(sum(m for m in stated if m)) + ("+" if None in stated else "") if any(stated) else "-"
        lines.append(_row([str(index), ", ".join(f"{n} {_short(topic(lectures[n]))}" for n in lecture_numbers),
                           ", ".join(f"lab {n} {_short(topic(_lab_path(labs[n])))}" for n in lab_numbers), total]))
    return "\n".join(lines)


# (file relative to the course root, start marker, end marker, renderer)
MAPS = [
    ("README.md", START, END, render),
    ("notebooks/00_setup_check.ipynb", "<!-- course-map:start -->", "<!-- course-map:end -->", render_notebook_map),
    ("docs/teaching.md", "<!-- course-timetable:start -->", "<!-- course-timetable:end -->", render_timetable),
]


def split_between(text: str, start_marker: str, end_marker: str, name: str = "README.md") -> tuple[str, str, str]:
    """(up to the start marker, what is between, from the end marker); raises if the markers are missing."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < 0 or end < start:
        raise IndexError_(f"{name} needs the markers {start_marker} and {end_marker} (in this order) around its course map")
    head = text[: start + len(start_marker)]
    return head, text[len(head):end].strip("\n"), text[end:]


def split_readme(text: str) -> tuple[str, str, str]:
    """(before the table, the table, after it); raises if the markers are missing or out of order."""
    return split_between(text, START, END)


def updated_readme(text: str, root: Path = ROOT) -> str:
    head, _, tail = split_readme(text)
    return f"{head}\n{render(root)}\n{tail}"


def _updated_markdown(text: str, start: str, end: str, body: str, name: str) -> str:
    head, _, tail = split_between(text, start, end, name)
    return f"{head}\n{body}\n{tail}"


def map_text(path: Path, start: str, end: str) -> str:
    """What is between a map's markers now (in a notebook: in the markdown cell that holds them)."""
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if cell["cell_type"] == "markdown" and start in source:
                return split_between(source, start, end, path.name)[1]
        raise IndexError_(f"{path.name} needs a markdown cell with the markers {start} and {end} around its course map")
    return split_between(path.read_text(encoding="utf-8"), start, end, path.name)[1]


def update_map(path: Path, start: str, end: str, body: str) -> bool:
    """Write ``body`` between the markers of ``path``; True if the file changed."""
    if path.suffix == ".ipynb":
        import nbformat

        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown" and start in cell.source:
                new = _updated_markdown(cell.source, start, end, body, path.name)
                if new == cell.source:
                    return False
                cell.source = new
                nbformat.write(nb, path)
                return True
        raise IndexError_(f"{path.name} needs a markdown cell with the markers {start} and {end} around its course map")
    text = path.read_text(encoding="utf-8")
    new = _updated_markdown(text, start, end, body, path.name)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a course map is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the course folder (default: this checkout)")
    args = parser.parse_args(argv)
    stale = 0
    for relative, start, end, renderer in MAPS:
        path = args.root / relative
        if not path.exists() and relative != "README.md":
            continue  # a course without this file has no such map
        try:
            body = renderer(args.root)
            try:
                current = map_text(path, start, end)
            except IndexError_:
                if relative == "README.md":
                    raise
                print(f"{relative}: no course map markers, skipped")  # the real course's test requires them
                continue
            if args.check:
                if current != body:
                    print(f"{relative}: the course {'index' if relative == 'README.md' else 'map'} is stale; "
                          "run: python tools/course_index.py")
                    stale += 1
                else:
                    print(f"{relative}: the course map matches the notebooks")
            elif update_map(path, start, end, body):
                print(f"{relative}: course map rewritten")
            else:
                print(f"{relative}: course map already current")
        except (OSError, IndexError_) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
