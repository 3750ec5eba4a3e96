"""tools/course_index.py: the README's table of lectures, labs and solutions matches the files."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("course_index", ROOT / "tools" / "course_index.py")
course_index = importlib.util.module_from_spec(spec)
spec.loader.exec_module(course_index)

README = "# Course\n\nIntro.\n\n<!-- course-index:start -->\nold table\n<!-- course-index:end -->\n\nAfter.\n"


def notebook(path: Path, *markdown: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(text) for text in markdown] + [nbformat.v4.new_code_cell("x = 1")]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def make_course(root: Path) -> None:
    badges = "[![Open in Colab](https://colab/badge.svg)](https://colab/x)"  # the launch-links cell: no heading
    notebook(root / "notebooks" / "00_setup_check.ipynb", "# 00 · Setup check and course map\n\nText.")
    notebook(root / "notebooks" / "02_computation_graphs.ipynb", badges, "Intro without heading.",
             "# 02 · Computation graphs (计算图)\n\n## What you will learn")
    notebook(root / "notebooks" / "03_pipes.ipynb", "# 03 · Inputs | outputs")
    notebook(root / "notebooks" / "04_untitled_thing.ipynb", "No heading at all.")
    notebook(root / "solutions" / "lab01_inspect_graph.ipynb", "# Lab 01 · Inspect a graph: count, draw")
    notebook(root / "labs" / "lab01_inspect_graph.ipynb", "# Lab 01 · Inspect a graph: count, draw")
    notebook(root / "solutions" / "lab02_tracing.ipynb", "# Lab 02 · Tracing pitfalls")  # lab not generated yet
    notebook(root / "solutions" / "lab42_extra.ipynb", "# Lab 42 · Bonus")  # follows no lecture
    (root / "notebooks" / "README.txt").write_text("not a notebook")
    (root / "README.md").write_text(README)


def test_rows_follow_the_files(tmp_path):
    make_course(tmp_path)
    table = course_index.render(tmp_path).splitlines()
    assert table[:2] == ["| # | topic | lecture | lab | solution |", "|---|---|---|---|---|"]
    assert table[2] == "| 00 | Setup check and course map | [00_setup_check](notebooks/00_setup_check.ipynb) | | |"
    assert table[3] == ("| 02 | Computation graphs (计算图) | [02_computation_graphs](notebooks/02_computation_graphs.ipynb) "
                        "| [Lab 01: Inspect a graph: count, draw](labs/lab01_inspect_graph.ipynb) "
                        "| [solution](solutions/lab01_inspect_graph.ipynb) |")
    assert table[4] == ("| 03 | Inputs \\| outputs | [03_pipes](notebooks/03_pipes.ipynb) "
                        "| Lab 02: Tracing pitfalls (run `make labs`) | [solution](solutions/lab02_tracing.ipynb) |")
    assert table[5] == "| 04 | Untitled thing | [04_untitled_thing](notebooks/04_untitled_thing.ipynb) | | |"
    assert table[6] == "| lab 42 | | | Lab 42: Bonus (run `make labs`) | [solution](solutions/lab42_extra.ipynb) |"
    assert len(table) == 7


def test_write_then_check_and_nothing_else_changes(tmp_path, capsys):
    make_course(tmp_path)
    readme = tmp_path / "README.md"
    assert course_index.main(["--root", str(tmp_path), "--check"]) == 1
    assert readme.read_text() == README  # --check writes nothing
    assert course_index.main(["--root", str(tmp_path)]) == 0
    text = readme.read_text()
    head, table, tail = course_index.split_readme(text)
    assert head == README.split("\nold table")[0] and tail == "<!-- course-index:end -->\n\nAfter.\n"
    assert table == course_index.render(tmp_path)
    assert course_index.main(["--root", str(tmp_path), "--check"]) == 0
    assert course_index.main(["--root", str(tmp_path)]) == 0 and readme.read_text() == text  # idempotent
    notebook(tmp_path / "notebooks" / "05_new.ipynb", "# 05 · New lecture")
    assert course_index.main(["--root", str(tmp_path), "--check"]) == 1  # a new notebook makes it stale
    assert "course index is stale" in capsys.readouterr().out


def test_missing_markers_are_an_error(tmp_path, capsys):
    make_course(tmp_path)
    (tmp_path / "README.md").write_text("# Course without an index\n")
    assert course_index.main(["--root", str(tmp_path), "--check"]) == 2
    assert "course-index:start" in capsys.readouterr().err
    with pytest.raises(course_index.IndexError_):
        course_index.split_readme("<!-- course-index:end --> then <!-- course-index:start -->")


def test_every_real_lab_follows_an_existing_lecture():
    """A new lab needs an entry in LAB_AFTER_LECTURE, else it sits in a row of its own at the end."""
    orphans = [row[3] for row in course_index.rows(ROOT) if row[0].startswith("lab")]
    assert not orphans, f"labs that follow no lecture (add them to LAB_AFTER_LECTURE in tools/course_index.py): {orphans}"


def test_readme_index_matches_the_notebooks():
    """The README's course index is what the files say (fails when a notebook is added, renamed or retitled)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    _, table, _ = course_index.split_readme(text)
    assert table == course_index.render(ROOT), "README.md's course index is stale; run: python tools/course_index.py"


# --- every map of the course, from the one index (issue 22) ---------------------------------------

MAP_FILES = {relative: (start, end) for relative, start, end, _ in course_index.MAPS}


def test_every_map_is_generated_and_current():
    """README's index, notebook 00's map and docs/teaching.md's timetable are what the files say."""
    for relative, start, end, renderer in course_index.MAPS:
        current = course_index.map_text(ROOT / relative, start, end)
        assert current == renderer(ROOT), f"{relative}: its course map is stale; run: python tools/course_index.py"


@pytest.mark.parametrize("relative", list(MAP_FILES))
def test_every_map_lists_every_lecture_and_lab(relative):
    text = course_index.map_text(ROOT / relative, *MAP_FILES[relative])
    lectures, labs = course_index.course(ROOT)
    assert lectures and labs
    for number, path in lectures.items():
        if relative == "docs/teaching.md":
            assert f"| {number} " in text or f", {number} " in text, f"{relative} leaves out lecture {number}"
        else:
            assert path.name in text, f"{relative} leaves out lecture {path.name}"
    for number in labs:
        assert f"ab {number}" in text, f"{relative} leaves out lab {number}"


def test_teaching_guide_assesses_every_lab_and_states_no_install_facts_of_its_own():
    text = (ROOT / "docs" / "teaching.md").read_text(encoding="utf-8")
    assessed = text.split("## What each lab assesses", 1)[1].split("##", 1)[0]
    for number in course_index.course(ROOT)[1]:
        assert f"\n| {number} " in assessed, f"docs/teaching.md: 'What each lab assesses' leaves out lab {number}"
    # disk space and install time are stated once, in the README, and referenced from here
    assert not re.search(r"GB of disk|minutes to install", text) and "README.md#start-in-a-minute" in text


def test_new_notebooks_appear_in_every_map(tmp_path):
    make_course(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "teaching.md").write_text("# Guide\n\n<!-- course-timetable:start -->\n<!-- course-timetable:end -->\n")
    notebook(tmp_path / "notebooks" / "00_setup_check.ipynb", "# 00 · Setup\n\n**Time:** about 2 minutes.",
             "## Map\n\n<!-- course-map:start -->\nold\n<!-- course-map:end -->\n")
    notebook(tmp_path / "notebooks" / "13_new_lecture.ipynb", "# 13 · Brand new: a lecture\n\n**Time:** about 30 minutes.")
    assert course_index.main(["--root", str(tmp_path), "--check"]) == 1
    assert course_index.main(["--root", str(tmp_path)]) == 0
    assert course_index.main(["--root", str(tmp_path), "--check"]) == 0
    nb_map = course_index.map_text(tmp_path / "notebooks" / "00_setup_check.ipynb", *MAP_FILES["notebooks/00_setup_check.ipynb"])
    assert "[13 · Brand new](13_new_lecture.ipynb)" in nb_map and "(../labs/lab01_inspect_graph.ipynb)" in nb_map
    timetable = (tmp_path / "docs" / "teaching.md").read_text()
    assert "13 Brand new" in timetable and "lab 42 Bonus" in timetable and "old" not in nb_map
    # 00 and 01... 04 have no lab of their own here: lecture 04 joins 03's session; 13 joins it too
    assert course_index.sessions(tmp_path) == [(["00"], []), (["02"], ["01"]), (["03", "04", "13"], ["02"]), ([], ["42"])]
    assert "| 3 | 03 Inputs \\| outputs, 04 Untitled thing, 13 Brand new | lab 02 Tracing pitfalls | 30+ |" in timetable


def test_minutes_reads_the_stated_time(tmp_path):
    path = notebook(tmp_path / "n.ipynb", "# T\n\n**Time:** about 25 minutes (the notebook runs in 20 s).")
    assert course_index.minutes(path) == 25
    assert course_index.minutes(notebook(tmp_path / "m.ipynb", "# T")) is None
