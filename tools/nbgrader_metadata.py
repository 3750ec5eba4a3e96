#!/usr/bin/env python
"""Give the worked solutions nbgrader's cell metadata, so a class that grades with nbgrader can use
the course unchanged (``nbgrader generate_assignment`` / ``autograde``).

What it writes, derived from what the course already marks (one source of truth):

* a code cell with a ``# BEGIN SOLUTION`` region: an *autograded answer* (``solution: true``);
* a markdown cell with a ``<!-- BEGIN SOLUTION -->`` region: a *manually graded answer*
  (``solution: true, grade: true``, 1 point);
* a check cell (``labNN.check_...(...)``) whose checks the solution passes: an *autograder test*
  (``grade: true, locked: true``), one point per passing check;
* every other cell: no nbgrader metadata (nbgrader leaves it as it is).

``grade_id`` is ``<lab>-<cell id>``: stable as long as the cell exists. Outputs are not touched.

    .venv/bin/python tools/nbgrader_metadata.py            # write the metadata into solutions/
    .venv/bin/python tools/nbgrader_metadata.py --check    # exit 1 if a solution's metadata is missing or stale
    .venv/bin/python tools/nbgrader_metadata.py --make-course ../course   # an nbgrader course folder for the labs

With nbgrader, set ``DEPLOYKIT_STRICT_CHECKS=1`` in the environment of ``nbgrader autograde``: a
check that prints a ``[HINT]`` then also raises, which is how nbgrader sees a failed test cell.
``docs/teaching.md`` has the nbgrader course setup.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CODE_REGION = re.compile(r"^\s*#+\s*BEGIN SOLUTION\s*$", re.M)
MD_REGION = re.compile(r"<!--\s*BEGIN SOLUTION\s*-->")
CHECK_CALL = re.compile(r"^\s*lab\d\d\.check_\w+\(", re.M)
PASS_LINE = re.compile(r"^\[PASS\] ", re.M)


def nbgrader_cell_metadata(lab: str, cell) -> dict | None:
    """The nbgrader metadata a solution cell should carry, or None for an ordinary cell."""
    grade_id = f"{lab}-{cell.get('id', '')}"
    base = {"grade_id": grade_id, "schema_version": 3, "task": False}
    if cell.cell_type == "code" and CODE_REGION.search(cell.source):
        return {**base, "grade": False, "locked": False, "solution": True}
    if cell.cell_type == "markdown" and MD_REGION.search(cell.source):
        return {**base, "grade": True, "locked": False, "points": 1, "solution": True}
    if cell.cell_type == "code" and CHECK_CALL.search(cell.source):
        text = "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")
        points = len(PASS_LINE.findall(text))
        if points:
            return {**base, "grade": True, "locked": True, "points": points, "solution": False}
    return None


def apply(path: Path, write: bool) -> list[str]:
    """Set (or, with ``write=False``, only compare) the nbgrader metadata of one solution."""
    nb = nbformat.read(path, as_version=4)
    lab = path.name[:5]
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    problems = []
    for index, cell in enumerate(nb.cells):
        wanted = nbgrader_cell_metadata(lab, cell)
        current = cell.metadata.get("nbgrader")
        if current != wanted:
            problems.append(f"{shown} cell {index}: nbgrader metadata {'missing' if current is None else 'stale'}")
            if wanted is None:
                cell.metadata.pop("nbgrader", None)
            else:
                cell.metadata["nbgrader"] = wanted
    if write and problems:
        nbformat.write(nb, path)
    return problems


def make_course(folder: Path) -> list[str]:
    """An nbgrader course folder: ``nbgrader_config.py`` (stubs identical to ``make labs``' ones, so
    nbgrader's student version is the course's lab) and ``source/labNN/`` with each solution."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import shutil

    from make_labs import MD_STUB, STUB

    folder = folder.resolve()
    if (folder / "nbgrader_config.py").exists():
        raise SystemExit(f"{folder / 'nbgrader_config.py'} exists: refusing to overwrite an nbgrader course")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nbgrader_config.py").write_text(
        "# nbgrader course for 'Model Deployment, from PyTorch to ONNX Runtime and LiteRT' (tools/nbgrader_metadata.py)\n"
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(folder)!r}\n"
        "c.CourseDirectory.course_id = 'model-deployment'\n"
        f"c.ClearSolutions.code_stub = {{'python': {STUB!r}}}\n"
        f"c.ClearSolutions.text_stub = {MD_STUB!r}\n", encoding="utf-8")
    labs = []
    for path in sorted((ROOT / "solutions").glob("lab*.ipynb")):
        target = folder / "source" / path.name[:5] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        labs.append(path.name[:5])
    return labs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report missing or stale metadata (exit 1 if any)")
    parser.add_argument("--make-course", type=Path, metavar="DIR", help="create an nbgrader course folder with the labs")
    parser.add_argument("solutions", nargs="*", type=Path, help="solution notebooks (default: solutions/lab*.ipynb)")
    args = parser.parse_args(argv)
    if args.make_course:
        labs = make_course(args.make_course)
        print(f"nbgrader course in {args.make_course}: {', '.join(labs)}; then, there: nbgrader generate_assignment lab01")
        return 0
    paths = args.solutions or sorted((ROOT / "solutions").glob("lab*.ipynb"))
    problems = [problem for path in paths for problem in apply(path.resolve(), write=not args.check)]
    for problem in problems:
        print(problem)
    if args.check:
        return 1 if problems else 0
    print(f"{len(problems)} cell(s) updated in {len(paths)} solution(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
