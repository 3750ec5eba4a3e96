"""tools/course_index.py: the README's table of lectures, labs and solutions matches the files."""
from __future__ import annotations

import importlib.util
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
