"""Unit tests of tools/portable_check.py's pure parts (`make test-portable`); nothing here runs qemu."""
from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("portable_check", ROOT / "tools" / "portable_check.py")
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)

EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c\nbogomips\t: 1\n"
XEON_AVX512 = "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni\n"
OLD_SSE = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt\n"


def test_cpu_flags_reads_the_flags_line():
    flags = pc.cpu_flags(EPYC_AVX2)
    assert {"avx2", "sse4_2", "fma"} <= flags and "avx512f" not in flags
    assert pc.cpu_flags("no flags here\n") == set()


@pytest.mark.parametrize(("cpuinfo", "model"), [(XEON_AVX512, "Haswell-v4"), (EPYC_AVX2, "SandyBridge"),
                                                (OLD_SSE, "Haswell-v4")])
def test_cpu_model_is_another_isa_class_than_the_host(cpuinfo, model):
    assert pc.choose_cpu_model(pc.cpu_flags(cpuinfo)) == model


def test_cpu_model_override_wins():
    assert pc.choose_cpu_model(pc.cpu_flags(EPYC_AVX2), "SandyBridge") == "SandyBridge"
    assert pc.choose_cpu_model(pc.cpu_flags(EPYC_AVX2), "") == "SandyBridge"  # empty QEMU_CPU = unset


def test_native_isa_env_goes_one_class_down():
    avx2 = pc.native_isa_env(pc.cpu_flags(EPYC_AVX2))
    assert avx2["ATEN_CPU_CAPABILITY"] == "default" and avx2["ONEDNN_MAX_CPU_ISA"] == "SSE41"
    avx512 = pc.native_isa_env(pc.cpu_flags(XEON_AVX512))
    assert avx512["ATEN_CPU_CAPABILITY"] == "avx2" and avx512["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    with pytest.raises(pc.CheckError, match="no AVX2"):
        pc.native_isa_env(pc.cpu_flags(OLD_SSE))


def test_kernelspec_runs_ipykernel_under_qemu(tmp_path):
    spec = pc.kernelspec("/usr/bin/qemu-x86_64", "Nehalem", "/repo/.venv/bin/python")
    assert spec["argv"] == ["/usr/bin/qemu-x86_64", "-cpu", "Nehalem", "/repo/.venv/bin/python",
                            "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["language"] == "python" and "Nehalem" in spec["display_name"]
    assert "env" not in spec  # the kernel inherits pytest's environment (DEPLOYKIT_BLOCK_NETWORK=1)
    path = pc.write_kernelspec(tmp_path / "jupyter", spec)
    assert path == tmp_path / "jupyter" / "kernels" / pc.KERNEL_NAME / "kernel.json"
    assert json.loads(path.read_text()) == spec


def test_kernelspec_is_found_by_jupyter_in_a_temporary_jupyter_path(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    pc.write_kernelspec(tmp_path, pc.kernelspec("qemu-x86_64", "Nehalem", "python"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    spec = KernelSpecManager().get_kernel_spec(pc.KERNEL_NAME)
    assert spec.argv[:3] == ["qemu-x86_64", "-cpu", "Nehalem"]


def test_default_notebooks_exist_and_are_resolved():
    paths = pc.resolve_notebooks([])
    assert [p.relative_to(ROOT).as_posix() for p in paths] == list(pc.NOTEBOOKS)
    assert all(p.is_file() for p in paths)


def test_notebook_arguments_are_validated(tmp_path):
    assert pc.resolve_notebooks(["notebooks/05_onnx_runtime_inference.ipynb"])[0].name == "05_onnx_runtime_inference.ipynb"
    with pytest.raises(pc.CheckError, match=r"unknown notebook path\(s\): nope\.ipynb, README\.md"):
        pc.resolve_notebooks(["nope.ipynb", "notebooks/05_onnx_runtime_inference.ipynb", "README.md"])
    with pytest.raises(pc.CheckError, match="either --all"):
        pc.resolve_notebooks(["notebooks/05_onnx_runtime_inference.ipynb"], use_all=True)
    assert len(pc.resolve_notebooks([], use_all=True)) > len(pc.NOTEBOOKS)


def test_main_refuses_an_unknown_notebook_before_doing_anything(capsys):
    assert pc.main(["no/such.ipynb"]) == 2
    assert "unknown notebook path(s): no/such.ipynb" in capsys.readouterr().err


def test_missing_qemu_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(pc.shutil, "which", lambda name: None)
    monkeypatch.setattr(pc.platform, "system", lambda: "Linux")
    monkeypatch.setattr(pc.platform, "machine", lambda: "x86_64")
    with pytest.raises(pc.CheckError, match=r"apt-get install qemu-user"):
        pc.find_qemu()


def test_addopts_drop_current_env_and_keep_the_rest():
    text = (ROOT / "pyproject.toml").read_text()
    words = shlex.split(pc.addopts_for_kernel(text))
    assert "--nbval-current-env" not in words
    assert "-rs" in words and "no:cacheprovider" in words
    assert words[words.index("--nbval-sanitize-with") + 1] == "tests/nbval_sanitize.cfg"
    fake = '[tool.pytest.ini_options]\naddopts = "-rs --nbval-current-env -p no:cacheprovider"\n'
    assert pc.addopts_for_kernel(fake) == "-rs -p no:cacheprovider"


def test_pytest_args_select_the_emulated_kernel_only_when_emulating(tmp_path):
    nb = ROOT / pc.NOTEBOOKS[0]
    emulated = pc.pytest_args(nb, emulated=True, addopts="-rs", junit=tmp_path / "j.xml",
                              cell_timeout=10, startup_timeout=20)
    assert emulated[:2] == ["-o", "addopts=-rs"] and f"--nbval-kernel-name={pc.KERNEL_NAME}" in emulated
    assert "--nbval" in emulated and emulated[-1] == str(nb)
    native = pc.pytest_args(nb, emulated=False, addopts="-rs", junit=tmp_path / "j.xml",
                            cell_timeout=10, startup_timeout=20)
    assert "-o" not in native and not any(a.startswith("--nbval-kernel-name") for a in native)


def test_qemu_warnings_are_filtered():
    text = ("qemu-x86_64: warning: TCG doesn't support requested feature: CPUID.01H:ECX.pcid [bit 17]\n"
            "real error\n")
    assert pc.strip_qemu_warnings(text) == "real error\n"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="solutions.lab05_quantise_to_budget.ipynb" name="Cell 1" time="1.0"/>
<testcase classname="solutions.lab05_quantise_to_budget.ipynb" name="Cell 3" time="2.0">
<failure message="#x1B[91mNotebook cell execution failed#x1B[0m">#x1B[94m mismatch 'stdout'#x1B[91m
 assert reference_output == test_output failed:
  - fp32: 154.0 KB, accuracy 0.9972
  ?         ^ ^
  + fp32: 153.9 KB, accuracy 0.9944</failure></testcase>
<testcase classname="x" name="Cell 4" time="1"><error message="boom">Traceback: boom</error></testcase>
</testsuite></testsuites>"""


def test_failing_cells_and_their_short_diff():
    failures = pc.failing_cells(JUNIT)
    assert [(f["cell"], f["kind"]) for f in failures] == [("Cell 3", "failure"), ("Cell 4", "error")]
    diff = pc.short_diff(failures[0]["message"])
    assert "expected: fp32: 153.9 KB, accuracy 0.9944" in diff  # `+` = the committed output
    assert "got:      fp32: 154.0 KB, accuracy 0.9972" in diff
    assert "#x1B" not in diff and "^" not in diff


def test_classify_tells_cpu_dependent_cells_from_native_failures():
    failures = [{"cell": "Cell 3"}, {"cell": "Cell 4"}]
    pc.classify(failures, [{"cell": "Cell 4"}])
    assert failures[0]["origin"].startswith("CPU-DEPENDENT") and failures[1]["origin"].startswith("fails natively")
    pc.classify(failures, None)
    assert failures[0]["origin"] == "not re-run natively"


def test_cell_head_names_the_failing_cell():
    message = "#x1B[94mCell 3: Cell outputs differ\n\nInput:\n#x1B[0mlab05.check_helpers(size_kb)\nfp32 = 1\n"
    assert pc.cell_head(message) == "lab05.check_helpers(size_kb)"
    assert pc.cell_head("no input section") == ""


def test_classify_names_timeouts_and_cascades():
    failures = [{"cell": "Cell 1", "message": "RuntimeError: jaxlib needs AVX"},
                {"cell": "Cell 2", "message": "NameError: name 'x' is not defined"},
                {"cell": "Cell 3", "message": "Timeout of 1800 seconds exceeded while executing cell."}]
    pc.classify(failures, [])
    assert [f["origin"].split()[0] for f in failures] == ["CPU-DEPENDENT:", "probably", "TIMED"]


def test_the_docs_quote_the_one_list_of_numerically_sensitive_notebooks():
    """docs/portability.md and the README once listed 7 notebooks and ten: both now quote NOTEBOOKS (issue 32)."""
    words = pc.notebooks_in_words()
    doc = (ROOT / "docs" / "portability.md").read_text(encoding="utf-8")
    quoted = doc.split("<!-- portable-notebooks:start -->")[1].split("<!-- portable-notebooks:end -->")[0]
    assert quoted == words, f"docs/portability.md lists {quoted!r}; tools/portable_check.py NOTEBOOKS is {words!r}"
    count = words.rsplit(": ", 1)[1].split()[0]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"the {count} numerically sensitive notebooks" in readme, f"the README should say 'the {count} numerically sensitive notebooks'"


def test_notebooks_in_words_names_lectures_and_labs():
    assert pc.notebooks_in_words(("notebooks/05_x.ipynb", "notebooks/13_y.ipynb", "solutions/lab05_a.ipynb",
                                  "solutions/lab10_b.ipynb")) == "lectures 05, 13 and the solutions of labs 05, 10: four notebooks"
