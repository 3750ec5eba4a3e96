"""tools/launch_links.py: Colab/Binder links at the top of every notebook, idempotent to the byte."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("launch_links", ROOT / "tools" / "launch_links.py")
launch_links = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch_links)

REPO = "someone/some-course"


def make_course(root: Path) -> dict[str, Path]:
    """A small course tree: one lecture, one solution, one lab, a README with the Binder marker."""
    paths = {}
    for rel, title in [("notebooks/01_intro.ipynb", "# 01 · Intro"), ("solutions/lab01_demo.ipynb", "# Lab 01 · Demo"),
                       ("labs/lab01_demo.ipynb", "# Lab 01 · Demo")]:
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        nb.cells = [nbformat.v4.new_markdown_cell(f"{title}\n\nWhat you will learn: ünïcode stays as is."),
                    nbformat.v4.new_code_cell("import deploykit as dk\nprint('hi')", execution_count=1,
                                              outputs=[nbformat.v4.new_output("stream", name="stdout", text="hi\n")])]
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"cell-{i}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
        paths[rel] = path
    (root / "README.md").write_text("# Course\n\n<!-- binder-badge -->\n[![Binder](https://x/badge)](https://old)\n\nText.\n")
    return paths


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_github_slug_from_remote_urls():
    assert launch_links.github_slug("https://github.com/owner/repo.git\n") == "owner/repo"
    assert launch_links.github_slug("https://github.com/owner/my.repo") == "owner/my.repo"
    assert launch_links.github_slug("git@github.com:owner/repo.git") == "owner/repo"
    assert launch_links.github_slug("ssh://git@github.com/owner/repo.git") == "owner/repo"
    assert launch_links.github_slug("/srv/git/course.git") is None  # a CI clone's local origin
    assert launch_links.github_slug("https://gitlab.com/owner/repo.git") is None


def test_default_repo_falls_back_to_the_course_slug(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert launch_links.default_repo(tmp_path) == launch_links.REPO
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", "git@github.com:fork/course.git"], check=True)
    assert launch_links.default_repo(tmp_path) == "fork/course"


def test_adds_two_cells_on_top_and_changes_nothing_else(tmp_path):
    paths = make_course(tmp_path)
    before = {rel: cells(p) for rel, p in paths.items()}
    lab = paths.pop("labs/lab01_demo.ipynb")
    lab_bytes = lab.read_bytes()
    stale = launch_links.run(tmp_path, REPO)
    assert sorted(stale) == sorted([*paths, "README.md"])
    assert lab.read_bytes() == lab_bytes, "labs/ is make_labs' to write"
    for rel, path in paths.items():
        after = cells(path)
        assert [after[1], *after[3:]] == before[rel], "the notebook's own cells must be untouched"
        links, setup = after[0], after[2]  # links on top; setup after the title, before the first code
        assert links["metadata"]["tags"] == ["launch-links"] and setup["metadata"]["tags"] == ["colab-setup"]
        text = "".join(links["source"])
        assert f"https://colab.research.google.com/github/{REPO}/blob/main/{rel}" in text
        assert f"https://mybinder.org/v2/gh/{REPO}/main?urlpath=lab/tree/{rel}" in text
        assert "Open in Colab" in text and "Open in Binder" in text
        assert "![" not in text and "<img" not in text, "plain links: no image that a browser fetches from another host"
        assert setup["outputs"] == [] and setup["execution_count"] is None
        assert f'os.chdir(f"{{course}}/{rel.split("/")[0]}")' in "".join(setup["source"])
        # the whole file is still exactly what nbformat would write
        assert nbformat.writes(nbformat.read(path, as_version=4)) + "\n" == path.read_text(encoding="utf-8")
    readme = (tmp_path / "README.md").read_text()
    assert f"](https://mybinder.org/v2/gh/{REPO}/main?urlpath=lab/tree/notebooks/00_setup_check.ipynb)" in readme
    assert readme.startswith("# Course\n\n<!-- binder-badge -->\n[![Binder]") and readme.endswith("\n\nText.\n")


def test_second_run_is_a_no_op_byte_for_byte(tmp_path):
    make_course(tmp_path)
    (tmp_path / "labs" / "lab01_demo.ipynb").unlink()
    launch_links.run(tmp_path, REPO)
    first = snapshot(tmp_path)
    assert launch_links.run(tmp_path, REPO) == []
    assert launch_links.main(["--root", str(tmp_path), "--repo", REPO]) == 0
    assert snapshot(tmp_path) == first


def test_check_mode_reports_and_writes_nothing(tmp_path, capsys):
    make_course(tmp_path)
    before = snapshot(tmp_path)
    assert launch_links.main(["--root", str(tmp_path), "--repo", REPO, "--check"]) == 1
    assert snapshot(tmp_path) == before
    out = capsys.readouterr().out
    assert "stale  notebooks/01_intro.ipynb" in out and "stale  labs/lab01_demo.ipynb" in out
    launch_links.main(["--root", str(tmp_path), "--repo", REPO])
    assert launch_links.main(["--root", str(tmp_path), "--repo", REPO, "--check"]) == 1  # the lab: not regenerated
    lab = tmp_path / "labs" / "lab01_demo.ipynb"
    with pytest.raises(launch_links.LaunchLinksError, match="make_labs"):
        launch_links.run(tmp_path, REPO, paths=[lab])
    nb = json.loads(lab.read_text())  # what make_labs does: copy the solution's cells, retarget them
    nb["cells"] = json.loads((tmp_path / "solutions" / "lab01_demo.ipynb").read_text())["cells"]
    assert launch_links.retarget(nb, "labs/lab01_demo.ipynb")
    lab.write_text(launch_links.dumps(nb), encoding="utf-8")
    assert launch_links.main(["--root", str(tmp_path), "--repo", REPO, "--check"]) == 0
    assert launch_links.main(["--root", str(tmp_path), "--repo", "other/repo", "--check"]) == 1  # links to elsewhere


def test_rerun_replaces_in_place_keeps_ids_and_removes_duplicates(tmp_path):
    path = make_course(tmp_path)["notebooks/01_intro.ipynb"]
    launch_links.run(tmp_path, REPO, paths=[path], readme=False)
    nb = json.loads(path.read_text())
    assert [c["id"] for c in nb["cells"]] == ["launch-links", "cell-0", "colab-setup", "cell-1"]
    nb["cells"].insert(2, dict(nb["cells"][0], id="copy"))  # an author duplicated the links cell
    nb["cells"].append(nb["cells"].pop(3))  # and moved the setup cell to the end
    path.write_text(launch_links.dumps(nb), encoding="utf-8")
    assert launch_links.run(tmp_path, "new/place", paths=[path], readme=False) == ["notebooks/01_intro.ipynb"]
    after = cells(path)
    tags = [c["metadata"].get("tags", []) for c in after]
    assert tags.count(["launch-links"]) == 1 and tags.count(["colab-setup"]) == 1
    assert after[0]["id"] == "launch-links" and after[-1]["id"] == "colab-setup"  # same places, same ids
    assert "github/new/place/blob/main/notebooks/01_intro.ipynb" in "".join(after[0]["source"])
    assert "https://github.com/new/place.git" in "".join(after[-1]["source"])


def test_an_executed_setup_cell_is_still_current(tmp_path):
    path = make_course(tmp_path)["notebooks/01_intro.ipynb"]
    launch_links.run(tmp_path, REPO, paths=[path], readme=False)
    nb = json.loads(path.read_text())
    nb["cells"][2]["execution_count"] = 1  # tools/execute_notebooks.py ran it: no output, a count
    path.write_text(launch_links.dumps(nb), encoding="utf-8")
    before = path.read_bytes()
    assert launch_links.run(tmp_path, REPO, paths=[path], readme=False) == []
    assert path.read_bytes() == before
    nb["cells"][2]["outputs"] = [nbformat.v4.new_output("stream", name="stdout", text="oops\n")]
    path.write_text(launch_links.dumps(nb), encoding="utf-8")
    assert launch_links.run(tmp_path, REPO, paths=[path], readme=False) == ["notebooks/01_intro.ipynb"]
    assert cells(path)[2]["outputs"] == []


def test_refuses_a_notebook_it_would_reformat(tmp_path):
    path = make_course(tmp_path)["notebooks/01_intro.ipynb"]
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4), encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(launch_links.LaunchLinksError, match="nbformat's JSON layout"):
        launch_links.run(tmp_path, REPO, paths=[path], readme=False)
    assert path.read_bytes() == before
    assert launch_links.main(["--root", str(tmp_path), "--repo", REPO, str(path)]) == 2


def test_setup_cell_does_nothing_and_prints_nothing_outside_colab():
    source = launch_links.setup_source(REPO, "main", "notebooks/01_intro.ipynb")
    assert "google.colab" not in sys.modules
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        exec(compile(source, "colab-setup", "exec"), namespace)
    assert out.getvalue() == ""
    assert sorted(k for k in namespace if not k.startswith("__")) == ["sys"]


def test_setup_cell_on_colab_installs_the_pins_and_moves_into_the_folder(tmp_path, monkeypatch):
    course = tmp_path / "course"
    source = launch_links.setup_source(REPO, "main", "labs/lab01_demo.ipynb").replace(launch_links.CLONE_DIR, str(course))
    calls = []

    def fake_run(command, check):
        calls.append(command)
        if command[:2] == ["git", "clone"]:  # the clone brings requirements.txt
            (course / "labs").mkdir(parents=True)
            (course / "requirements.txt").write_text((ROOT / "requirements.txt").read_text())

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))
    moved = []
    monkeypatch.setattr("os.chdir", moved.append)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "colab-setup", "exec"), {})
    clone, pins, editable = calls
    assert clone == ["git", "clone", "--depth", "1", "--branch", "main", f"https://github.com/{REPO}.git", str(course)]
    assert pins[:5] == [sys.executable, "-m", "pip", "install", "-q"]
    assert "torch==2.14.1" in pins and "onnxruntime==1.31.1" in pins and "litert-torch==0.10.0" in pins
    assert not any(p.split("==")[0] in launch_links.COLAB_SKIP for p in pins[5:]), "Colab keeps its own Jupyter"
    assert editable[-3:] == ["--no-deps", "-e", str(course)]
    assert moved == [f"{course}/labs"] and sys.path[0] == str(course)
    assert "restart" in out.getvalue()


def test_setup_cell_gives_an_empty_output_in_a_real_kernel(tmp_path):
    """What strict nbval sees: the cell runs in a kernel and leaves no output at all."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(launch_links.setup_source(REPO, "main", "notebooks/x.ipynb"))]
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert nb.cells[0].outputs == []


def test_retarget_points_a_lab_at_itself_for_make_labs(tmp_path):
    path = make_course(tmp_path)["solutions/lab01_demo.ipynb"]
    plain = nbformat.read(path, as_version=4)
    assert launch_links.retarget(plain, "labs/lab01_demo.ipynb") is False  # no links yet: nothing to do
    launch_links.run(tmp_path, REPO, paths=[path], readme=False)
    lab = nbformat.read(path, as_version=4)  # what make_labs copies
    assert launch_links.retarget(lab, "labs/lab01_demo.ipynb") is True
    links, setup = lab.cells[0], lab.cells[2]
    assert isinstance(links.source, str) and links.cell_type == "markdown"  # still NotebookNodes
    assert f"github/{REPO}/blob/main/labs/lab01_demo.ipynb" in links.source and "solutions/" not in links.source
    assert 'os.chdir(f"{course}/labs")' in setup.source
    assert launch_links.retarget(lab, "labs/lab01_demo.ipynb") is False  # idempotent


def test_real_course_notebooks_have_current_launch_links():
    """Every lecture, lab and solution links to itself on Colab and Binder (one repository for all)."""
    paths = launch_links.notebook_paths(ROOT)
    if not paths:
        pytest.skip("no notebooks yet")
    targets = {launch_links.current_target(json.loads(p.read_text(encoding="utf-8"))) for p in paths}
    repo, branch = next((t for t in sorted(targets, key=str) if t), (launch_links.default_repo(), launch_links.BRANCH))
    stale = launch_links.run(ROOT, repo, branch, check=True)
    assert not stale, (f"{len(stale)} file(s) lack current launch links ({', '.join(stale[:5])}...); run: "
                       f"python tools/launch_links.py --repo {repo} && python tools/make_labs.py (with retarget wired in)")
