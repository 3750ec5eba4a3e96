"""tools/grade.py on sample submissions made here: complete, partly wrong, crashing, endless,
malformed, tampered, and a lab from another week. The grade table is asserted."""
from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB = "lab01_inspect_graph"
MARKER = re.compile(r"^\s*#+\s*(BEGIN|END) SOLUTION\s*$|<!--\s*(BEGIN|END) SOLUTION\s*-->", re.M)


def load_grader():
    spec = importlib.util.spec_from_file_location("grade", ROOT / "tools" / "grade.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["grade"] = module   # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def filled_lab(lab: str = LAB):
    """The handed-out lab with every exercise filled in from the worked solution, as a learner would."""
    handed_out = nbformat.read(ROOT / "labs" / f"{lab}.ipynb", as_version=4)
    solution = [cell for cell in nbformat.read(ROOT / "solutions" / f"{lab}.ipynb", as_version=4).cells
                if "solution-only" not in cell.metadata.get("tags", [])]
    assert len(solution) == len(handed_out.cells), "labs/ is stale: run make labs"
    for cell, answer in zip(handed_out.cells, solution):
        if "# YOUR CODE HERE" in cell.source or "*Your answer here.*" in cell.source:
            cell.source = MARKER.sub("", answer.source)
    return handed_out


def exercise_cells(nb) -> list[int]:
    handed_out = nbformat.read(ROOT / "labs" / f"{LAB}.ipynb", as_version=4)
    return [i for i, cell in enumerate(handed_out.cells) if cell.cell_type == "code" and "# YOUR CODE HERE" in cell.source]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    grader = load_grader()
    folder = tmp_path_factory.mktemp("submissions")
    out = tmp_path_factory.mktemp("grades")
    samples = {}

    complete = filled_lab()
    samples["ada"] = complete

    partly_wrong = filled_lab()
    first = exercise_cells(partly_wrong)[0]
    # a count_ops that forgets to count (a learner's mistake); the other exercises are right
    partly_wrong.cells[first].source += "\n\n\ndef count_ops(graph):\n    return {}\n"
    samples["ben"] = partly_wrong

    samples["cat"] = nbformat.read(ROOT / "labs" / f"{LAB}.ipynb", as_version=4)   # nothing filled in: crashes

    endless = filled_lab()
    endless.cells[exercise_cells(endless)[-1]].source += "\nwhile True:\n    pass\n"
    samples["dan"] = endless

    tampered = filled_lab()
    check_cell = next(i for i, c in enumerate(tampered.cells) if c.cell_type == "code" and "lab01.check_" in c.source)
    tampered.cells[check_cell].source = 'print("[PASS] looks fine")'
    samples["eve"] = tampered

    for learner, nb in samples.items():
        (folder / learner).mkdir()
        nbformat.write(nb, folder / learner / f"{LAB}.ipynb")
    (folder / "fay").mkdir()
    (folder / "fay" / f"{LAB}.ipynb").write_text("{ this is not json", encoding="utf-8")
    (folder / "gus").mkdir()
    shutil.copyfile(ROOT / "labs" / "lab02_tracing_pitfalls.ipynb", folder / "gus" / "lab02_tracing_pitfalls.ipynb")
    # ada also handed in another week's lab in her folder: one learner, and not a "wrong lab" row
    shutil.copyfile(ROOT / "labs" / "lab02_tracing_pitfalls.ipynb", folder / "ada" / "lab02_tracing_pitfalls.ipynb")

    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert grader.main([str(folder), "--lab", "lab01", "--out", str(out), "--cell-timeout", "20", "--timeout", "120"]) == 0
    after = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    with (out / "lab01.csv").open(encoding="utf-8") as handle:
        listed = list(csv.DictReader(handle))
    rows = {row["learner"]: row for row in listed}
    assert len(rows) == len(listed), "one row per learner for the graded lab"
    return rows, before, after, out


def test_grader_never_modifies_a_submission(graded):
    _, before, after, _ = graded
    assert before == after


def test_complete_submission_scores_full_marks(graded):
    rows, *_ = graded
    assert rows["ada"]["score"] == "1.00" and rows["ada"]["status"] == "ok" and rows["ada"]["first error"] == ""


def test_partly_wrong_submission_gets_partial_credit_with_the_hint(graded):
    rows, *_ = graded
    row = rows["ben"]
    assert 0 < float(row["score"]) < 1 and row["check_count_ops(count_ops)"] == "HINT"


def test_crashing_submission_names_its_first_error(graded):
    rows, *_ = graded
    row = rows["cat"]
    assert row["score"] == "0.00" and row["status"] == "crashed" and "NotImplementedError" in row["first error"]


def test_endless_submission_is_stopped(graded):
    rows, *_ = graded
    assert rows["dan"]["status"].startswith("timeout")


def test_tampered_checks_score_nothing(graded):
    rows, *_ = graded
    row = rows["eve"]
    assert row["status"].startswith("tampered") and "tampered" in row.values()
    assert float(row["score"]) < float(rows["ada"]["score"])


def test_malformed_file_gets_its_own_row_and_other_labs_are_skipped(graded):
    rows, *_ = graded
    assert rows["fay"]["status"].startswith("not a notebook")
    assert "gus" not in rows   # only a lab02: skipped when grading lab01, not "wrong lab 0.00"
    assert rows["ada"]["status"] == "ok"   # her lab02 neither adds a row nor replaces her lab01


def test_without_lab_filter_another_week_still_gets_a_row(tmp_path):
    grader = load_grader()
    nb = nbformat.read(ROOT / "labs" / "lab02_tracing_pitfalls.ipynb", as_version=4)
    row = grader.grade_file("gus", ROOT / "labs" / "lab02_tracing_pitfalls.ipynb", "lab01", {}, tmp_path, tmp_path, 5, 5)
    assert row.status == "wrong lab: this is lab02, graded lab01" and grader.which_lab(nb) == "lab02"
    assert grader.lab_of_file(ROOT / "labs" / "lab02_tracing_pitfalls.ipynb") == "lab02"


def test_timed_checks_are_marked(tmp_path):
    grader = load_grader()
    assert grader.timed_checks("lab08") == {"check_results", "check_fastest"}
    assert grader.timed_checks("lab01") == set()
    checks = [grader.Check("a", "check_results(results)", True, True), grader.Check("b", "check_profile(x)", True, False)]
    rows = [grader.Row("ada", "lab08.ipynb", "lab08", results={"check_results(results)": "PASS"}, score=0.5),
            grader.Row("ada", "lab08_again.ipynb", "lab08"), grader.Row("ben", "lab08.ipynb", "lab08")]
    grader.write_tables(rows, {"lab08": (checks, {})}, tmp_path)
    text = (tmp_path / "lab08.md").read_text(encoding="utf-8")
    assert text.startswith("# lab08: 2 learner(s), 3 submission(s)")
    assert "check_results(results) [timed]" in text and "check_profile(x) [timed]" not in text
    assert "re-grade it on a quiet machine" in text
    header = (tmp_path / "lab08.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "check_results(results) [timed]" in header and header.endswith(",runs")


def busy_then(second: str):
    """A stand-in for grade.execute: the first run's timed check finds the machine busy, the next says ``second``."""
    from deploykit.bench import BUSY

    runs = []

    def execute(path, scratch, cell_timeout, timeout):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if "lab08.check_results(" in cell.source:
                line = f"[HINT] configurations measured fairly: {BUSY}: results[...] is far from" if not runs else second
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=line + "\n")]
        runs.append(scratch)
        executed = scratch / "executed.ipynb"
        nbformat.write(nb, executed)
        return "ok", executed

    return execute, runs


@pytest.mark.parametrize("second, status, verdict", [
    ("[PASS] configurations measured fairly", "ok", "PASS"),
    ("[HINT] configurations measured fairly: machine busy: re-run: again", "machine busy in 2 runs: re-grade on a quiet machine", "HINT"),
    ("[HINT] configurations measured fairly: median 40 ms, 20x what", "ok", "HINT")])
def test_a_submission_a_timed_check_found_busy_is_run_once_more(tmp_path, monkeypatch, second, status, verdict):
    grader = load_grader()
    execute, runs = busy_then(second)
    monkeypatch.setattr(grader, "execute", execute)
    pauses = []
    monkeypatch.setattr(grader.time, "sleep", pauses.append)
    path = tmp_path / f"{LAB08}.ipynb"
    shutil.copyfile(ROOT / "labs" / f"{LAB08}.ipynb", path)
    (tmp_path / "out" / "executed").mkdir(parents=True)
    row = grader.grade_file("ada", path, "lab08", {}, tmp_path, tmp_path / "out", 10, 10)
    assert len(runs) == row.runs == 2 and runs[0] != runs[1]   # a fresh scratch folder for the second run
    assert row.status == status and row.results["check_results(results)"] == verdict
    assert pauses == [grader.BUSY_PAUSE_S] and grader.BUSY_PAUSE_S >= 5   # a pause before the re-run, none after it


def fake_execute(runs: list, outputs):
    """A stand-in for grade.execute that gives each code cell the outputs ``outputs(cell)`` returns (None: unchanged)."""
    def execute(path, scratch, cell_timeout, timeout):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code" and outputs(cell) is not None:
                cell.outputs = outputs(cell)
        runs.append(scratch)
        nbformat.write(nb, scratch / "executed.ipynb")
        return "ok", scratch / "executed.ipynb"
    return execute


def grade_lab08(grader, tmp_path, monkeypatch, outputs, edit=None) -> tuple:
    runs = []
    monkeypatch.setattr(grader, "execute", fake_execute(runs, outputs))
    monkeypatch.setattr(grader.time, "sleep", lambda seconds: None)
    nb = nbformat.read(ROOT / "labs" / f"{LAB08}.ipynb", as_version=4)
    if edit:
        edit(nb)
    path = tmp_path / f"{LAB08}.ipynb"
    nbformat.write(nb, path)
    (tmp_path / "out" / "executed").mkdir(parents=True, exist_ok=True)
    return grader.grade_file("ada", path, "lab08", {}, tmp_path, tmp_path / "out", 10, 10), runs


def stream(text: str) -> list:
    return [nbformat.v4.new_output("stream", name="stdout", text=text + "\n")]


def test_only_a_timed_checks_result_line_that_says_busy_runs_again(tmp_path, monkeypatch):
    from deploykit.bench import BUSY

    grader = load_grader()
    # A learner's own cell printing the words, and a timed check cell whose busy words are not its result line.
    def outputs(cell):
        if "lab08.check_results(" in cell.source:
            return stream(f"[PASS] configurations measured fairly\nnote: {BUSY} (an earlier attempt)")
        return stream(f"[HINT] mine: {BUSY}") if "# YOUR CODE HERE" in cell.source else None
    row, runs = grade_lab08(grader, tmp_path, monkeypatch, outputs)
    assert len(runs) == row.runs == 1 and row.status == "ok"


def test_an_edited_check_cell_that_says_busy_is_tampered_not_run_again(tmp_path, monkeypatch):
    from deploykit.bench import BUSY

    grader = load_grader()
    line = f'print("[HINT] configurations measured fairly: {BUSY}: results are far")'

    def edit(nb):
        cell = next(c for c in nb.cells if c.cell_type == "code" and "lab08.check_results(" in c.source)
        cell.source = line + "  # lab08.check_results(results)"

    def outputs(cell):
        return stream(f"[HINT] configurations measured fairly: {BUSY}: results are far") if line in cell.source else None
    row, runs = grade_lab08(grader, tmp_path, monkeypatch, outputs, edit)
    assert len(runs) == row.runs == 1 and row.status.startswith("tampered")
    assert row.results["check_results(results)"] == "tampered"


def test_a_crash_is_reported_before_a_busy_machine(tmp_path, monkeypatch):
    from deploykit.bench import BUSY

    grader = load_grader()
    crash = nbformat.v4.new_output("error", ename="NameError", evalue="name 'results' is not defined", traceback=[])

    def outputs(cell):
        if "lab08.check_results(" in cell.source:
            return stream(f"[HINT] configurations measured fairly: {BUSY}: results are far")
        return [crash] if "# YOUR CODE HERE" in cell.source else None
    row, runs = grade_lab08(grader, tmp_path, monkeypatch, outputs)
    assert row.runs == 2 and row.status == "crashed" and "NameError" in row.first_error


def test_a_submission_no_timed_check_found_busy_runs_once(tmp_path, monkeypatch):
    grader = load_grader()
    runs = []

    def execute(path, scratch, cell_timeout, timeout):  # every check cell answers "[HINT] ...", none says busy
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if "lab08.check_" in cell.source:
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="[HINT] x: `results` is empty\n")]
        runs.append(scratch)
        nbformat.write(nb, scratch / "executed.ipynb")
        return "ok", scratch / "executed.ipynb"

    monkeypatch.setattr(grader, "execute", execute)
    path = tmp_path / f"{LAB08}.ipynb"
    shutil.copyfile(ROOT / "labs" / f"{LAB08}.ipynb", path)
    (tmp_path / "out" / "executed").mkdir(parents=True)
    row = grader.grade_file("ada", path, "lab08", {}, tmp_path, tmp_path / "out", 10, 10)
    assert len(runs) == row.runs == 1 and row.status == "ok" and row.score == 0


def test_markdown_summary_and_executed_copies_are_written(graded):
    _, _, _, out = graded
    text = (out / "lab01.md").read_text(encoding="utf-8")
    assert text.startswith("# lab01: 6 learner(s), 6 submission(s)") and "| ada |" in text
    assert (out / "executed" / "ada__lab01.ipynb").exists()


def test_grader_refuses_bad_arguments(tmp_path, capsys):
    grader = load_grader()
    with pytest.raises(SystemExit):
        grader.main([str(tmp_path / "missing")])
    (tmp_path / "a.ipynb").write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit):
        grader.main([str(tmp_path), "--lab", "week5"])
    with pytest.raises(SystemExit):
        grader.main([str(tmp_path), "--out", str(tmp_path / "grades")])
    assert "--out must not be" in capsys.readouterr().err


# --- Issue 23 §1: the same notebook gets the same grade. Lab 08's checks time the model on this machine.

LAB08 = "lab08_fastest_configuration"


def lab08_samples() -> dict:
    complete = filled_lab(LAB08)
    incomplete = filled_lab(LAB08)   # Exercises 3 and 4 left blank
    stubs = [i for i, cell in enumerate(nbformat.read(ROOT / "labs" / f"{LAB08}.ipynb", as_version=4).cells)
             if cell.cell_type == "code" and "# YOUR CODE HERE" in cell.source]
    handed_out = nbformat.read(ROOT / "labs" / f"{LAB08}.ipynb", as_version=4)
    for index in stubs[2:]:
        incomplete.cells[index].source = handed_out.cells[index].source
    return {"ada": complete, "ben": incomplete, "cat": handed_out}


def grade_table(grader, folder, out) -> list[dict]:
    assert grader.main([str(folder), "--lab", "lab08", "--out", str(out), "--cell-timeout", "300", "--timeout", "900"]) == 0
    with (out / "lab08.csv").open(encoding="utf-8") as handle:
        return [{key: value for key, value in row.items() if key not in ("seconds", "runs")} for row in csv.DictReader(handle)]


@pytest.mark.measured
def test_lab08_sample_submissions_get_the_same_grades_twice(tmp_path):
    grader = load_grader()
    folder = tmp_path / "submissions"
    for learner, nb in lab08_samples().items():
        (folder / learner).mkdir(parents=True)
        nbformat.write(nb, folder / learner / f"{LAB08}.ipynb")
    first, second = grade_table(grader, folder, tmp_path / "first"), grade_table(grader, folder, tmp_path / "second")
    assert first == second
    scores = {row["learner"]: row["score"] for row in first}
    assert scores["ada"] == "1.00" and 0 < float(scores["ben"]) < 1 and scores["cat"] == "0.00", first
