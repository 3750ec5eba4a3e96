#!/usr/bin/env python
"""Grade a class's lab submissions: run each in a fresh kernel, collect every check, write tables.

For instructors. ``SUBMISSIONS`` is a folder holding either one folder per learner (with that
learner's lab notebooks inside) or files named ``<learner>_labNN_<topic>.ipynb``:

    make grade SUBMISSIONS=path/to/submissions                # every lab found
    make grade SUBMISSIONS=path/to/submissions LAB=lab05      # only lab 05 (files of other labs are skipped)
    .venv/bin/python tools/grade.py SUBMISSIONS --out grades --cell-timeout 120 --timeout 600

What it does, per submission, without ever modifying it: copy it to a scratch folder, execute the
copy in a fresh kernel (cells that fail do not stop the run: later checks still count; each cell
has a time limit, and the whole notebook one too), read every check's ``[PASS]`` / ``[HINT]`` line,
and compare the check cells with the lab as it was handed out (an edited check cell is reported as
tampered and its checks score nothing). The checks that count are those the worked solution passes
(a check the solution calls to demonstrate a hint is shown, not scored).

Writes, in ``--out`` (default ``grades/``): ``labNN.csv`` (learner x check, score, status, first
error), ``labNN.md`` (the same as a Markdown table) and ``executed/<learner>__labNN.ipynb`` (the run,
for a closer look). A file that is not a notebook, a lab from another week (when no ``--lab`` is
given; with ``--lab`` such files are skipped and counted), a notebook that never finishes or crashes,
each gets its own row; the grader itself never stops on one submission. The tables count learners
and mark with ``[timed]`` the checks that time something on the grading machine (their verdict can
depend on its load). A submission whose timed check said the machine looked busy is run once more
after a pause (column ``runs``; ``seconds`` counts both runs and the pause); if it still was, its
status says ``machine busy``: re-grade it on a quiet machine before trusting a HINT there.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB_NAME = re.compile(r"(lab\d\d)(?:_[a-z0-9_]+)?", re.I)
CHECK_IMPORT = re.compile(r"from\s+deploykit\.checks\s+import\s+(lab\d\d)")
CHECK_CALL = re.compile(r"\b(lab\d\d)\.(check_\w+)\((.*)\)\s*$")
RESULT_LINE = re.compile(r"^\[(PASS|HINT)\] ")
#: A submission whose timed check says the machine looked busy is run again, this many times at most,
#: after a pause: a burst of load on the grading machine should not decide a grade.
BUSY_RERUNS, BUSY_PAUSE_S = 1, 10


@dataclass
class Check:
    """One check call of a lab: its cell (by id) and its label, and whether the solution passes it."""

    cell_id: str
    label: str
    graded: bool
    timed: bool = False


@dataclass
class Row:
    learner: str
    file: str
    lab: str
    status: str = "ok"
    results: dict = field(default_factory=dict)   # check label -> PASS / HINT / not run / tampered
    score: float = 0.0
    first_error: str = ""
    seconds: float = 0.0
    runs: int = 0   # executions: a second when a timed check found the machine busy


def check_calls(source: str) -> list[str]:
    """Labels of the check calls in a cell, in order: ``check_quantized(dynamic_path, "dynamic")``."""
    labels = []
    for line in source.splitlines():
        match = CHECK_CALL.search(line.strip())
        if match and not line.lstrip().startswith("#"):
            labels.append(f"{match.group(2)}({match.group(3)})")
    return labels


def result_lines(cell) -> list[str]:
    """``PASS`` / ``HINT`` for each check line a cell printed, in order."""
    text = "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    return [RESULT_LINE.match(line).group(1) for line in text.splitlines() if RESULT_LINE.match(line)]


def said_busy(cell) -> bool:
    """True if one of the cell's ``[HINT]`` lines says the machine looked busy (``deploykit.bench.BUSY``)."""
    from deploykit.bench import BUSY

    text = "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    return any(RESULT_LINE.match(line) and BUSY in line for line in text.splitlines())


def lab_files(lab: str) -> tuple[Path, Path]:
    labs = sorted((ROOT / "labs").glob(f"{lab}_*.ipynb"))
    solutions = sorted((ROOT / "solutions").glob(f"{lab}_*.ipynb"))
    if not labs or not solutions:
        raise SystemExit(f"no lab {lab!r} in labs/ and solutions/; expected one of "
                         f"{sorted({p.name[:5] for p in (ROOT / 'labs').glob('lab*.ipynb')})}")
    return labs[0], solutions[0]


def timed_checks(lab: str) -> set[str]:
    """Names of ``lab``'s check functions marked ``timed`` (they time something on this machine)."""
    import importlib

    try:
        module = importlib.import_module(f"deploykit.checks.{lab}")
    except ImportError:
        return set()
    return {name for name in dir(module) if name.startswith("check_") and getattr(getattr(module, name), "timed", False)}


def expected_checks(lab: str) -> tuple[list[Check], dict[str, str]]:
    """The lab's checks, in order, and the handed-out source of every check cell (by cell id)."""
    import nbformat

    lab_path, solution_path = lab_files(lab)
    handed_out = nbformat.read(lab_path, as_version=4)
    solution = nbformat.read(solution_path, as_version=4)
    solution_results = {}
    for cell in solution.cells:  # the solution's check cells, matched to the lab's by their source
        if cell.cell_type == "code" and check_calls(cell.source):
            solution_results.setdefault(cell.source.strip(), result_lines(cell))
    checks, check_sources = [], {}
    timed = timed_checks(lab)
    for cell in handed_out.cells:
        labels = check_calls(cell.source) if cell.cell_type == "code" else []
        if not labels:
            continue
        check_sources[cell.get("id", "")] = cell.source
        outcomes = solution_results.get(cell.source.strip(), [])
        for index, label in enumerate(labels):
            graded = index < len(outcomes) and outcomes[index] == "PASS"
            checks.append(Check(cell.get("id", ""), label, graded, label.split("(")[0] in timed))
    if not any(check.graded for check in checks):
        raise SystemExit(f"{lab}: no check cell of labs/ matches a passing check of solutions/: run `make labs` first")
    return checks, check_sources


def which_lab(nb) -> str | None:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            match = CHECK_IMPORT.search(source)
            if match:
                return match.group(1).lower()
    return None


def lab_of_file(path: Path) -> str | None:
    """The lab a submitted file holds: by its ``from deploykit.checks import labNN`` cell, else by its name."""
    try:
        lab = which_lab(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):
        lab = None
    if lab is None:
        match = LAB_NAME.search(path.stem)
        lab = match.group(1).lower() if match else None
    return lab


def find_submissions(folder: Path) -> list[tuple[str, Path]]:
    """(learner, path) for every notebook under ``folder``; the learner is the sub-folder's name,
    or the file name without its lab part."""
    found = []
    for path in sorted(folder.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        relative = path.relative_to(folder)
        if len(relative.parts) > 1:
            learner = relative.parts[0]
        else:
            learner = LAB_NAME.sub("", path.stem).strip("_- ") or path.stem
        found.append((learner, path))
    return found


def run_one(source: Path, target: Path, cell_timeout: int) -> int:
    """Child process: execute ``source`` (a copy) and write the executed notebook to ``target``."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(source, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                            record_timing=False, resources={"metadata": {"path": str(ROOT / "labs")}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, target)
    return 0


def execute(path: Path, scratch: Path, cell_timeout: int, timeout: int) -> tuple[str, Path]:
    """Run a copy of ``path``; returns (status, executed notebook path)."""
    copy = scratch / "submission.ipynb"
    shutil.copyfile(path, copy)
    executed = scratch / "executed.ipynb"
    env = {**os.environ, "DEPLOYKIT_ARTIFACTS": str(scratch / "artifacts"), "DEPLOYKIT_BLOCK_NETWORK": "1"}
    process = subprocess.Popen([sys.executable, __file__, "--run-one", str(copy), str(executed), "--cell-timeout", str(cell_timeout)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)   # the runner and its kernel
        process.communicate()
        return f"timeout: did not finish in {timeout} s", executed
    if process.returncode != 0:
        last = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
        if any("CellTimeoutError" in line or "Timeout waiting" in line for line in last):
            return f"timeout: a cell ran longer than {cell_timeout} s", executed
        return "grader error: " + (last[-1][:200] if last else f"exit code {process.returncode}"), executed
    return "ok", executed


def grade_file(learner: str, path: Path, lab_filter: str | None, expected: dict, scratch_root: Path,
               out: Path, cell_timeout: int, timeout: int) -> Row:
    import nbformat

    row = Row(learner, path.name, lab_filter or "unknown")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        nb = nbformat.reads(json.dumps(raw), as_version=4)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        row.status = f"not a notebook: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
        return row
    except Exception as error:  # nbformat validation and friends
        row.status = f"not a notebook: {type(error).__name__}"
        return row
    lab = which_lab(nb)
    if lab is None:
        row.status = "not a course lab: no `from deploykit.checks import labNN` cell"
        return row
    if lab_filter and lab != lab_filter:
        row.status = f"wrong lab: this is {lab}, graded {lab_filter}"
        return row
    row.lab = lab
    if lab not in expected:
        expected[lab] = expected_checks(lab)
    checks, check_sources = expected[lab]
    submitted = {cell.get("id", ""): cell.source for cell in nb.cells if cell.cell_type == "code"}
    tampered = {cell_id for cell_id, source in check_sources.items() if submitted.get(cell_id, "").strip() != source.strip()}

    # Only the check cells as handed out can say "machine busy": an edited one is tampered, not a reason to re-run.
    timed_cells = {check.cell_id for check in checks if check.timed} - tampered
    start = time.perf_counter()
    for attempt in range(1 + BUSY_RERUNS):
        if attempt:
            time.sleep(BUSY_PAUSE_S)  # a burst of load passes: the same work gets the same grade on the next run
        scratch = Path(tempfile.mkdtemp(prefix=f"{learner}-", dir=scratch_root))
        row.status, executed = execute(path, scratch, cell_timeout, timeout)
        busy = executed.exists() and any(said_busy(cell) for cell in nbformat.read(executed, as_version=4).cells
                                         if cell.get("id", "") in timed_cells)
        if not busy:
            break
    row.runs = attempt + 1
    row.seconds = time.perf_counter() - start
    if executed.exists():
        shutil.copyfile(executed, out / "executed" / f"{learner}__{lab}.ipynb")
        ran = nbformat.read(executed, as_version=4)
        by_id = {cell.get("id", ""): cell for cell in ran.cells}
        for cell in ran.cells:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error" and not row.first_error:
                    index = ran.cells.index(cell)
                    row.first_error = f"cell {index}: {output.get('ename', '')}: {str(output.get('evalue', ''))[:150]}"
        position: dict[str, int] = {}
        for check in checks:
            index = position.get(check.cell_id, 0)
            position[check.cell_id] = index + 1
            if check.cell_id in tampered:
                row.results[check.label] = "tampered"
                continue
            lines = result_lines(by_id[check.cell_id]) if check.cell_id in by_id else []
            row.results[check.label] = lines[index] if index < len(lines) else "not run"
    else:
        for check in checks:
            row.results[check.label] = "not run"
    # One status, the most serious first: edited checks, then a crash, then a machine that stayed busy.
    if tampered and row.status == "ok":
        row.status = f"tampered: {len(tampered)} check cell(s) edited or removed"
    if row.status == "ok" and row.first_error:
        row.status = "crashed"
    if busy and row.status == "ok":
        row.status = f"machine busy in {row.runs} runs: re-grade on a quiet machine"
    graded = [check for check in checks if check.graded]
    row.score = sum(row.results.get(check.label) == "PASS" for check in graded) / len(graded)
    return row


def write_tables(rows: list[Row], expected: dict, out: Path) -> list[Path]:
    written = []
    for lab in sorted({row.lab for row in rows}):
        lab_rows = [row for row in rows if row.lab == lab]
        graded = [check for check in expected[lab][0] if check.graded] if lab in expected else []
        labels = [check.label for check in graded]
        titles = [f"{check.label} [timed]" if check.timed else check.label for check in graded]
        header = ["learner", "file", "score", "status", *titles, "first error", "seconds", "runs"]
        table = [[row.learner, row.file, f"{row.score:.2f}", row.status, *(row.results.get(label, "") for label in labels),
                  row.first_error, f"{row.seconds:.1f}", str(row.runs)] for row in lab_rows]
        csv_path = out / f"{lab}.csv"
        with csv_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(table)
        md_path = out / f"{lab}.md"
        escape = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
        learners = len({row.learner for row in lab_rows})
        lines = [f"# {lab}: {learners} learner(s), {len(lab_rows)} submission(s)", ""]
        timed = [check.label for check in graded if check.timed]
        if timed:
            lines += [f"Checks marked [timed] time the model on the grading machine ({', '.join(timed)}): a HINT "
                      "there may come from a busy machine. A submission whose timed check said so was run again after a pause "
                      "(`runs`); if it still was, its status says so: re-grade it on a quiet machine.", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(escape(cell) for cell in line) + " |" for line in table]
        md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written += [csv_path, md_path]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("submissions", type=Path, nargs="?", help="folder of submitted lab notebooks")
    parser.add_argument("--lab", help="grade only this lab (e.g. lab05); files of other labs are skipped")
    parser.add_argument("--out", type=Path, default=ROOT / "grades", help="where the tables go (default grades/)")
    parser.add_argument("--cell-timeout", type=int, default=120, help="seconds one cell may run")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one whole notebook may run")
    parser.add_argument("--run-one", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        return run_one(*args.run_one, args.cell_timeout)
    if args.submissions is None or not args.submissions.is_dir():
        parser.error(f"expected a folder of submissions, got {args.submissions}")
    lab_filter = args.lab.lower()[:5] if args.lab else None
    if lab_filter and not re.fullmatch(r"lab\d\d", lab_filter):
        parser.error(f"--lab expected a name like lab05, got {args.lab!r}")
    submissions = find_submissions(args.submissions)
    if not submissions:
        parser.error(f"no .ipynb files under {args.submissions}")
    if lab_filter:
        others = [(learner, path) for learner, path in submissions if lab_of_file(path) not in (None, lab_filter)]
        submissions = [item for item in submissions if item not in others]
        if others:
            print(f"skipped {len(others)} file(s) of other labs (graded: {lab_filter})", flush=True)
        if not submissions:
            parser.error(f"no {lab_filter} submissions under {args.submissions}")
    if args.submissions.resolve() in {args.out.resolve(), *args.out.resolve().parents}:
        parser.error("--out must not be the submissions folder or inside it (the grader never writes there)")
    (args.out / "executed").mkdir(parents=True, exist_ok=True)
    expected: dict = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="grade-") as scratch_root:
        for learner, path in submissions:
            row = grade_file(learner, path, lab_filter, expected, Path(scratch_root), args.out,
                             args.cell_timeout, args.timeout)
            ran = f"{row.seconds:.1f} s" + (f", {row.runs} runs" if row.runs > 1 else "")
            print(f"{row.learner:<16} {row.lab:<6} score {row.score:.2f}  {row.status}  ({ran})", flush=True)
            rows.append(row)
    for path in write_tables(rows, expected, args.out):
        print("wrote", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
