#!/usr/bin/env python
"""Generate ``labs/`` (exercises) from ``solutions/`` (the only source). Never edit labs by hand.

In a solution notebook:

* in a code cell, the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` become
  ``# YOUR CODE HERE`` and a ``raise NotImplementedError(...)`` at the same indentation;
* in a markdown cell, text between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->``
  becomes ``*Your answer here.*``;
* a cell tagged ``solution-only`` is left out of the lab.

Outputs and execution counts are cleared. Each lab records the hash of what was generated, so the
tool can tell a lab that a learner has run or edited, and refuses to overwrite it unless given
``--force`` (and then it keeps a backup in ``labs/.backup/``).

    python tools/make_labs.py            # write labs/ (refusing to clobber your work)
    python tools/make_labs.py --check    # exit 1 if labs/ is stale or leaks solution code (CI)
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_links import retarget  # noqa: E402  (labs link to themselves, not to their solution)

ROOT = Path(__file__).resolve().parents[1]
CODE_BEGIN = re.compile(r"^(\s*)#+\s*BEGIN SOLUTION\s*$")
CODE_END = re.compile(r"^\s*#+\s*END SOLUTION\s*$")
MD_REGION = re.compile(r"<!--\s*BEGIN SOLUTION\s*-->.*?<!--\s*END SOLUTION\s*-->", re.S)
MARKERS = re.compile(r"BEGIN SOLUTION|END SOLUTION")
STUB = "# YOUR CODE HERE\nraise NotImplementedError(\"Lab exercise: write your code here, then run the check below.\")"
MD_STUB = "*Your answer here.*"
META_KEY = "deploykit_lab"


class LabError(Exception):
    """A solution notebook that cannot be turned into a lab, or a lab that must not be overwritten."""


def strip_code(source: str, where: str) -> tuple[str, list[str]]:
    """Replace solution regions in code; return the new source and the removed lines."""
    out: list[str] = []
    removed: list[str] = []
    indent: str | None = None
    for number, line in enumerate(source.splitlines(), 1):
        begin = CODE_BEGIN.match(line)
        if begin:
            if indent is not None:
                raise LabError(f"{where}: line {number}: BEGIN SOLUTION inside another solution region")
            indent = begin.group(1)
            out.extend(indent + stub_line for stub_line in STUB.splitlines())
        elif CODE_END.match(line):
            if indent is None:
                raise LabError(f"{where}: line {number}: END SOLUTION without a BEGIN SOLUTION")
            indent = None
        elif indent is None:
            out.append(line)
        else:
            removed.append(line)
    if indent is not None:
        raise LabError(f"{where}: BEGIN SOLUTION is never closed by END SOLUTION")
    return "\n".join(out), removed


def cells_hash(nb) -> str:
    """Hash of the parts a learner changes: cell types and sources."""
    payload = json.dumps([[c.cell_type, c.source] for c in nb.cells])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def make_lab(solution_path: Path) -> tuple[nbformat.NotebookNode, list[str]]:
    """The lab notebook for ``solution_path`` and the solution lines it must not contain."""
    solution = nbformat.read(solution_path, as_version=4)
    lab = copy.deepcopy(solution)
    lab.cells = []
    removed: list[str] = []
    rel = solution_path.relative_to(ROOT).as_posix() if solution_path.is_relative_to(ROOT) else solution_path.name
    for index, cell in enumerate(solution.cells):
        if "solution-only" in cell.get("metadata", {}).get("tags", []):
            removed.extend(cell.source.splitlines() if cell.cell_type == "code" else [])
            continue
        cell = copy.deepcopy(cell)
        cell.pop("id", None)
        if cell.cell_type == "code":
            cell.source, lines = strip_code(cell.source, f"{rel} cell {index}")
            removed.extend(lines)
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            cell.source = MD_REGION.sub(MD_STUB, cell.source)
        cell.metadata.pop("execution", None)
        lab.cells.append(cell)
    retarget(lab, f"labs/{solution_path.name}")
    lab.metadata.pop("widgets", None)
    # The solution's load stamp (tools/execute_notebooks.py) describes a run of the solution, not the lab:
    # keeping it would make every re-execution of a solution leave its lab stale.
    stamp_owner = lab.metadata.get("deploykit", {})
    stamp_owner.pop("executed", None)
    if not stamp_owner:
        lab.metadata.pop("deploykit", None)
    for i, cell in enumerate(lab.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives the same bytes
    lab.metadata[META_KEY] = {"generated_from": rel, "cells_hash": cells_hash(lab)}
    # A line that the given code also has (e.g. a `with torch.inference_mode():` used in both) is not a leak.
    given = {line.strip() for cell in lab.cells if cell.cell_type == "code" for line in cell.source.splitlines()}
    return lab, [line.strip() for line in removed
                 if len(line.strip()) >= 12 and not line.strip().startswith("#") and line.strip() not in given]


def learner_touched(path: Path) -> str | None:
    """Why ``path`` holds a learner's work (run or edited), or None if it is as generated."""
    nb = nbformat.read(path, as_version=4)
    if any(c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")) for c in nb.cells):
        return "it has been run (it has outputs)"
    stored = nb.metadata.get(META_KEY, {}).get("cells_hash")
    if stored is None:
        return "it was not made by this tool"
    if stored != cells_hash(nb):
        return "it has been edited since it was generated"
    return None


def serialise(nb) -> str:
    return nbformat.writes(nb) + "\n"


def pairs(solutions_dir: Path, labs_dir: Path) -> list[tuple[Path, Path]]:
    return [(s, labs_dir / s.name) for s in sorted(solutions_dir.glob("*.ipynb"))]


def check(solutions_dir: Path, labs_dir: Path) -> list[str]:
    problems = []
    expected = pairs(solutions_dir, labs_dir)
    for solution, lab_path in expected:
        lab, removed = make_lab(solution)
        if not removed:
            problems.append(f"{solution.name}: has no solution region; a lab needs at least one")
        if not lab_path.exists():
            problems.append(f"{lab_path.name}: missing; run `make labs`")
            continue
        text = lab_path.read_text(encoding="utf-8")
        if text != serialise(lab):
            problems.append(f"{lab_path.name}: stale (differs from what {solution.name} generates); run `make labs`")
        if MARKERS.search(text):
            problems.append(f"{lab_path.name}: contains a solution marker")
        leaked = sorted({line for line in removed if line in text})
        if leaked:
            problems.append(f"{lab_path.name}: leaks solution code: {leaked[:3]}")
    names = {lab.name for _, lab in expected}
    problems += [f"{p.name}: has no solution notebook" for p in sorted(labs_dir.glob("*.ipynb")) if p.name not in names]
    return problems


def write(solutions_dir: Path, labs_dir: Path, force: bool = False) -> int:
    labs_dir.mkdir(exist_ok=True)
    refused = 0
    for solution, lab_path in pairs(solutions_dir, labs_dir):
        lab, _ = make_lab(solution)
        text = serialise(lab)
        if lab_path.exists():
            if lab_path.read_text(encoding="utf-8") == text:
                print(f"up to date  {lab_path.relative_to(labs_dir.parent)}")
                continue
            reason = learner_touched(lab_path)
            if reason and not force:
                print(f"REFUSED     {lab_path.relative_to(labs_dir.parent)}: {reason}. Your work is untouched; "
                      f"rename it, or rerun with --force (a backup goes to labs/.backup/).")
                refused += 1
                continue
            if reason:
                backup = labs_dir / ".backup" / f"{lab_path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
                backup.parent.mkdir(exist_ok=True)
                backup.write_bytes(lab_path.read_bytes())
                print(f"backed up   {backup.relative_to(labs_dir.parent)}")
        lab_path.write_text(text, encoding="utf-8")
        print(f"wrote       {lab_path.relative_to(labs_dir.parent)}")
    return 1 if refused else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report stale or leaking labs; write nothing")
    parser.add_argument("--force", action="store_true", help="overwrite labs you ran or edited (backed up first)")
    parser.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    parser.add_argument("--labs", type=Path, default=ROOT / "labs")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check(args.solutions, args.labs)
            for problem in problems:
                print(problem)
            print("labs/ is in sync with solutions/" if not problems else f"{len(problems)} problem(s)")
            return 1 if problems else 0
        return write(args.solutions, args.labs, args.force)
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
