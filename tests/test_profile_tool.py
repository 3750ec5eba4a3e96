"""tools/profile_notebooks.py (`make profile`): per-cell timings and the memory it counts."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("profile_notebooks", ROOT / "tools" / "profile_notebooks.py")
pn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pn)


def test_first_line_skips_comments_and_nbval_markers():
    assert pn._first_line("# NBVAL_IGNORE_OUTPUT\n# a comment\n\nrows = []\nprint(rows)") == "rows = []"
    assert pn._first_line("# only a comment") == "(no code)"
    assert len(pn._first_line("x = 1  # " + "long " * 40)) == 70


def test_pss_counts_pages_shared_with_a_child_once():
    assert pn._pss_bytes(os.getpid()) > 0
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(1.0)  # let the child map the interpreter and libc
        pids = (os.getpid(), child.pid)
        rss = sum(psutil.Process(p).memory_info().rss for p in pids)
        pss = sum(pn._pss_bytes(p) for p in pids)
        assert 0 < pss < rss  # the interpreter's and libc's pages are shared, so counted once, not twice
    finally:
        child.kill()
        child.wait()
    assert pn._pss_bytes(child.pid) == 0  # an exited process counts nothing


def test_profile_reports_each_code_cell_slowest_first(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny"),
                nbformat.v4.new_code_cell("import time\ntime.sleep(0.6)"),
                nbformat.v4.new_code_cell("# NBVAL_IGNORE_OUTPUT\nblock = bytearray(64 * 2**20)")]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    row = pn.profile(path, timeout=60)
    assert row["notebook"] == str(path) and row["status"] == "ok" and row["seconds"] > 0.6
    assert [index for _, index, _, _ in row["cells"]] == [1, 2]  # code cells only, the sleep first
    seconds, _, line, _ = row["cells"][0]
    assert seconds >= 0.6 and line == "import time"
    assert row["cells"][1][2] == "block = bytearray(64 * 2**20)"
    assert row["cells"][1][3] >= 64 and row["peak_mb"] >= row["cells"][1][3]  # the 64 MB block is in the peak


def test_slowest_must_not_be_negative(capsys):
    with pytest.raises(SystemExit):
        pn.main(["--slowest", "-1", "notebooks/00_setup_check.ipynb"])
    assert "--slowest takes a number of cells" in capsys.readouterr().err


def test_each_notebook_is_profiled_under_the_cpu_lock(monkeypatch, tmp_path, capsys):
    import contextlib

    events = []

    @contextlib.contextmanager
    def fake_quiet_machine():
        events.append("lock")
        yield 0.0
        events.append("unlock")

    def fake_profile(path, timeout):
        events.append("run")
        return {"notebook": path.name, "seconds": 1.0, "peak_mb": 10.0, "status": "ok", "cells": []}

    monkeypatch.setattr(pn, "quiet_machine", fake_quiet_machine)
    monkeypatch.setattr(pn, "profile", fake_profile)
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    assert pn.main([str(a), str(b)]) == 0
    assert events == ["lock", "run", "unlock"] * 2
    out = capsys.readouterr().out
    assert "CPUs used by others" in out and "of the CPUs" in out


def test_a_cold_budget_set_by_an_issue_applies_cold_only():
    lecture = "notebooks/14_llm_runtimes_on_device.ipynb"
    assert pn.budget_seconds(lecture, cold=True) == 120.0
    assert pn.budget_seconds(lecture, cold=False) == pn.BUDGET_SECONDS
    assert pn.budget_seconds("notebooks/13_transformer_onnx_runtime.ipynb", cold=True) == 60.0
    rows = [{"notebook": lecture, "seconds": 90.0, "peak_mb": 1900.0, "status": "ok"},
            {"notebook": "notebooks/13_transformer_onnx_runtime.ipynb", "seconds": 90.0, "peak_mb": 1900.0, "status": "ok"}]
    cold = pn.table(rows, 180.0, cold=True)
    warm = pn.table(rows, 180.0, cold=False)
    assert f"| `{lecture}` | 90.0 | 1900 | yes |" in cold and "(14_llm_runtimes_on_device: 120 s cold" in cold
    assert f"| `{lecture}` | 90.0 | 1900 | no |" in warm and "120 s cold" not in warm
    assert "| `notebooks/13_transformer_onnx_runtime.ipynb` | 90.0 | 1900 | no |" in cold
