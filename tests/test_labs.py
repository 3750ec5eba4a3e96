"""labs/ is generated from solutions/, stays in sync, leaks nothing, and never clobbers a learner."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_labs", ROOT / "tools" / "make_labs.py")
make_labs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_labs)

SOLUTION_CODE = """import numpy as np
def count_ops(graph):
    # BEGIN SOLUTION
    counts = {}
    for node in graph.nodes:
        counts[node.op] = counts.get(node.op, 0) + 1
    # END SOLUTION
    return counts
"""


def write_solution(folder: Path, name: str = "lab99_demo.ipynb") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Lab 99\nWhy?\n<!-- BEGIN SOLUTION -->Because graphs.<!-- END SOLUTION -->"),
        nbformat.v4.new_code_cell(SOLUTION_CODE, execution_count=1,
                                  outputs=[nbformat.v4.new_output("stream", text="[PASS] ok\n")]),
        nbformat.v4.new_code_cell("print('teacher notes')", metadata={"tags": ["solution-only"]}),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb, path)
    return path


@pytest.fixture
def course(tmp_path):
    solutions, labs = tmp_path / "solutions", tmp_path / "labs"
    write_solution(solutions)
    return solutions, labs


def test_generated_lab_has_stubs_no_solution_and_no_outputs(course):
    solutions, labs = course
    assert make_labs.write(solutions, labs) == 0
    lab = nbformat.read(labs / "lab99_demo.ipynb", as_version=4)
    code = lab.cells[1]
    assert "    # YOUR CODE HERE\n    raise NotImplementedError(" in code.source
    assert "counts[node.op]" not in code.source and "return counts" in code.source
    assert code.outputs == [] and code.execution_count is None
    assert "Because graphs" not in lab.cells[0].source and "*Your answer here.*" in lab.cells[0].source
    assert len(lab.cells) == 2  # the solution-only cell is gone
    assert make_labs.check(solutions, labs) == []


def test_stub_raises_when_run(course):
    solutions, labs = course
    make_labs.write(solutions, labs)
    source = nbformat.read(labs / "lab99_demo.ipynb", as_version=4).cells[1].source
    namespace: dict = {}
    exec(source, namespace)
    with pytest.raises(NotImplementedError, match="Lab exercise"):
        namespace["count_ops"](None)


def test_check_reports_stale_missing_and_leaking_labs(course):
    solutions, labs = course
    assert any("missing" in p for p in make_labs.check(solutions, labs))
    make_labs.write(solutions, labs)
    lab_path = labs / "lab99_demo.ipynb"
    lab_path.write_text(lab_path.read_text().replace("# YOUR CODE HERE", "counts[node.op] = counts.get(node.op, 0) + 1"))
    problems = make_labs.check(solutions, labs)
    assert any("stale" in p for p in problems) and any("leaks solution code" in p for p in problems)


def test_refuses_to_overwrite_a_lab_the_learner_ran_or_edited(course, capsys):
    solutions, labs = course
    make_labs.write(solutions, labs)
    lab_path = labs / "lab99_demo.ipynb"
    lab = nbformat.read(lab_path, as_version=4)
    lab.cells[1].source = lab.cells[1].source.replace("raise NotImplementedError", "counts = {}  #")
    nbformat.write(lab, lab_path)
    learner_work = lab_path.read_text()
    # The solution changes; regenerating must not destroy the learner's edit.
    sol = solutions / "lab99_demo.ipynb"
    sol.write_text(sol.read_text().replace("Why?", "Why, exactly?"))
    assert make_labs.write(solutions, labs) == 1
    assert "REFUSED" in capsys.readouterr().out and "edited" in make_labs.learner_touched(lab_path)
    assert lab_path.read_text() == learner_work
    # With --force it is overwritten, and the learner's version is kept as a backup.
    assert make_labs.write(solutions, labs, force=True) == 0
    backups = list((labs / ".backup").glob("lab99_demo.*.ipynb"))
    assert len(backups) == 1 and backups[0].read_text() == learner_work


def test_a_run_lab_counts_as_learner_work(course):
    solutions, labs = course
    make_labs.write(solutions, labs)
    lab_path = labs / "lab99_demo.ipynb"
    lab = nbformat.read(lab_path, as_version=4)
    lab.cells[1].execution_count = 3
    nbformat.write(lab, lab_path)
    assert make_labs.learner_touched(lab_path) == "it has been run (it has outputs)"


def test_unbalanced_markers_are_errors(tmp_path):
    with pytest.raises(make_labs.LabError, match="never closed"):
        make_labs.strip_code("# BEGIN SOLUTION\nx = 1", "demo")
    with pytest.raises(make_labs.LabError, match="without a BEGIN"):
        make_labs.strip_code("x = 1\n# END SOLUTION", "demo")


def test_repository_labs_are_in_sync_with_solutions():
    problems = make_labs.check(ROOT / "solutions", ROOT / "labs")
    assert problems == [], "\n".join(problems) + "\nrun `make labs`"


def test_pytest_never_collects_labs():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "labs" in config["norecursedirs"] and "labs" not in config["testpaths"]
    assert "--nbval-lax" not in config["addopts"]


def test_a_line_the_given_code_also_has_is_not_a_leak(tmp_path):
    solutions, labs = tmp_path / "solutions", tmp_path / "labs"
    nb = nbformat.v4.new_notebook()
    shared = "with torch.inference_mode():"
    nb.cells = [nbformat.v4.new_code_cell(f"{shared}\n    y = model(x)"),
                nbformat.v4.new_code_cell(f"# BEGIN SOLUTION\n{shared}\n    z = secret_answer(x)\n# END SOLUTION")]
    solutions.mkdir()
    nbformat.write(nb, solutions / "lab98_shared.ipynb")
    make_labs.write(solutions, labs)
    assert make_labs.check(solutions, labs) == []
    lab_path = labs / "lab98_shared.ipynb"
    lab_path.write_text(lab_path.read_text().replace("# YOUR CODE HERE", "z = secret_answer(x)"))
    assert any("leaks solution code" in p and "secret_answer" in p for p in make_labs.check(solutions, labs))


def test_re_executing_a_solution_does_not_leave_its_lab_stale(course):
    """The load stamp tools/execute_notebooks.py writes into a solution describes that run, not the lab."""
    solutions, labs = course
    assert make_labs.write(solutions, labs) == 0
    path = solutions / "lab99_demo.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.metadata["deploykit"] = {"executed": {"others_busy_fraction": 0.01, "seconds": 3.0}}
    nbformat.write(nb, path)
    assert make_labs.check(solutions, labs) == []
    assert make_labs.write(solutions, labs) == 0
    assert "deploykit" not in nbformat.read(labs / "lab99_demo.ipynb", as_version=4).metadata
