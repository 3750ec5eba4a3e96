"""nbgrader compatibility: the solutions carry nbgrader's metadata, and nbgrader's own student
version of each lab hides exactly what the course's lab generator hides.

Needs the instructor extra (`make install-instructor`; CI installs it). Without nbgrader the
generation test is skipped with that reason; the metadata test always runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import nbgrader_metadata  # noqa: E402
from launch_links import retarget  # noqa: E402


def test_solutions_carry_current_nbgrader_metadata():
    assert nbgrader_metadata.main(["--check"]) == 0, "run: .venv/bin/python tools/nbgrader_metadata.py"


def test_every_check_cell_is_an_autograded_test_and_every_answer_a_solution_cell():
    for path in sorted((ROOT / "solutions").glob("lab*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        kinds = [cell.metadata.get("nbgrader", {}) for cell in nb.cells]
        assert any(kind.get("grade") and not kind.get("solution") for kind in kinds), f"{path.name}: no test cell"
        assert any(kind.get("solution") for kind in kinds), f"{path.name}: no answer cell"
        ids = [kind["grade_id"] for kind in kinds if kind]
        assert len(ids) == len(set(ids)), f"{path.name}: grade ids repeat"


@pytest.fixture(scope="module")
def nbgrader_release(tmp_path_factory):
    nbgrader = Path(sys.executable).parent / "nbgrader"
    if not nbgrader.exists():
        pytest.skip("nbgrader is not installed (instructors: make install-instructor)")
    course = tmp_path_factory.mktemp("nbgrader-course") / "course"
    labs = nbgrader_metadata.make_course(course)
    env = {**os.environ, "PATH": f"{nbgrader.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # nbgrader calls alembic
    for lab in labs:
        result = subprocess.run([str(nbgrader), "generate_assignment", lab, "--force"], cwd=course, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return course / "release"


@pytest.mark.parametrize("solution", sorted(p.name for p in (ROOT / "solutions").glob("lab*.ipynb")))
def test_nbgrader_hides_what_make_labs_hides(nbgrader_release, solution):
    released = nbformat.read(nbgrader_release / solution[:5] / solution, as_version=4)
    retarget(released, f"labs/{solution}")   # as make_labs does: a lab's launch links point at the lab
    lab = nbformat.read(ROOT / "labs" / solution, as_version=4)
    assert len(released.cells) == len(lab.cells)
    for index, (theirs, ours) in enumerate(zip(released.cells, lab.cells)):
        assert theirs.source.strip() == ours.source.strip(), f"{solution} cell {index} differs"
        assert not theirs.get("outputs"), f"{solution} cell {index}: nbgrader kept outputs"


def test_strict_checks_raise_for_autograders(monkeypatch, capsys):
    from deploykit.checks import CheckNotPassed, hint

    assert not hint("demo", "a learner's hint")          # the course's own mode: print, do not raise
    monkeypatch.setenv("DEPLOYKIT_STRICT_CHECKS", "1")
    with pytest.raises(CheckNotPassed, match="demo: a learner's hint"):
        hint("demo", "a learner's hint")
    assert capsys.readouterr().out.count("[HINT] demo: a learner's hint") == 2
