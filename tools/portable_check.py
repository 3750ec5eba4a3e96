#!/usr/bin/env python
"""Prove that the committed notebook outputs hold on a CPU unlike this one (``make test-portable``).

The numerically sensitive notebooks (``NOTEBOOKS`` below) run under strict ``pytest --nbval``, each
in a fresh Jupyter kernel, but the kernel runs on an EMULATED x86-64 CPU (Debian's ``qemu-user``)::

    qemu-x86_64 -cpu <MODEL> .venv/bin/python -m ipykernel_launcher -f {connection_file}

PyTorch, oneDNN, ONNX Runtime (MLAS), XNNPACK (LiteRT) and NumPy pick their kernels from CPUID, which
qemu emulates, so the notebooks' numbers are computed by other code paths than on the host.

CPU model (``--cpu`` or ``QEMU_CPU=...`` overrides):

- host with AVX-512: ``Haswell-v4`` (AVX2 + FMA, no AVX-512, no VNNI: most laptops);
- host with AVX2 but no AVX-512: ``SandyBridge`` (AVX, no AVX2/FMA: PyTorch's DEFAULT kernels, oneDNN's
  and ONNX Runtime's AVX kernels instead of AVX2/FMA), because Haswell would be the host's own ISA class.
  Not ``Nehalem`` (SSE4.2, no AVX): jaxlib, which litert_torch imports, refuses to load without AVX, so
  lectures 08-09 and labs 06-07 cannot run there at all (the course needs AVX). ``QEMU_CPU=Nehalem`` still
  works for the notebooks that do not convert to LiteRT (05, 07, lab05).

Before any notebook runs, the tool runs the emulated Python once and prints what PyTorch, NumPy and ONNX
Runtime see there next to the host's view, and refuses if PyTorch's kernel ISA is the host's.

The kernelspec is written into a temporary ``JUPYTER_PATH`` folder (nothing is registered elsewhere), and
pytest runs with ``-o addopts=...``: the project's ``addopts`` (pyproject.toml) minus
``--nbval-current-env``, which would override ``--nbval-kernel-name``. The root ``conftest.py`` still sets
``DEPLOYKIT_BLOCK_NETWORK=1``; the tool reads the running kernel's environment and fails if it is missing.

Artifacts: other people may run notebooks in ``artifacts/`` at the same time, so the check uses its own
folder (``DEPLOYKIT_ARTIFACTS``): by default a fresh copy of ``artifacts/`` (warm cache: models built
natively, inference emulated); ``--cold`` starts from an empty folder shared by the run's notebooks, in
order (every model, conversions included, is built under emulation: much slower).

``--native-isa`` (``make test-isa``) runs natively instead, with the libraries that allow it forced one
instruction set down: on an AVX2 host ``ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41
MKL_ENABLE_INSTRUCTIONS=SSE4_2 NPY_DISABLE_CPU_FEATURES=X86_V3 OPENBLAS_CORETYPE=Nehalem``; on an AVX-512
host the AVX2 equivalents. ONNX Runtime and XNNPACK cannot be forced down natively: only emulation
covers them.

Usage::

    make test-portable                                   # the notebooks below, emulated
    make test-isa                                        # the same, native with PyTorch/oneDNN forced down
    .venv/bin/python tools/portable_check.py notebooks/05_onnx_runtime_inference.ipynb   # just some
    .venv/bin/python tools/portable_check.py --all       # every lecture and solution notebook
    QEMU_CPU=Haswell-v4 .venv/bin/python tools/portable_check.py
    .venv/bin/python tools/portable_check.py --cold --report /tmp/portable.md

Each notebook is its own pytest run (its time and peak memory are measured); at the end a table lists
them and every failing cell with its diff. Exit status 0 only if every notebook passed. Timings under
emulation are ~10x native: see docs/portability.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The numerically sensitive notebooks: the one place this list lives.
NOTEBOOKS = (
    "notebooks/05_onnx_runtime_inference.ipynb",
    "notebooks/07_on_device_android.ipynb",
    "notebooks/08_litert_conversion.ipynb",
    "notebooks/09_ort_vs_litert.ipynb",
    "notebooks/13_transformer_onnx_runtime.ipynb",
    "notebooks/14_llm_runtimes_on_device.ipynb",
    "solutions/lab05_quantise_to_budget.ipynb",
    "solutions/lab06_litert_convert.ipynb",
    "solutions/lab07_capstone_deployment_report.ipynb",
    "solutions/lab10_language_model_budget.ipynb",
)

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen")


def notebooks_in_words(notebooks=NOTEBOOKS) -> str:
    """``NOTEBOOKS`` as the docs say it: "lectures 05, 07 and the solutions of labs 05, 10: four notebooks".

    docs/portability.md and the README quote this (tests/test_portable_check.py keeps them equal to it)."""
    lectures = [Path(n).name[:2] for n in notebooks if n.startswith("notebooks/")]
    labs = [Path(n).name[3:5] for n in notebooks if n.startswith("solutions/lab")]
    count = len(notebooks)
    return (f"lectures {', '.join(lectures)} and the solutions of labs {', '.join(labs)}: "
            f"{_NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else count} notebooks")


KERNEL_NAME = "deploykit-emulated"
QEMU = "qemu-x86_64"
#: How many times slower than the host an emulated kernel is declared to be (qemu TCG runs these notebooks 20-60x slower).
EMULATION_TIME_SCALE = 50
QEMU_INSTALL_HINT = "install Debian's qemu-user: `apt-get install qemu-user` (it provides qemu-x86_64)"
# qemu-user prints these once at start for CPU features TCG cannot emulate (system-level ones such as
# pcid or x2apic, irrelevant in user mode). nbval sends the kernel's stderr to /dev/null anyway.
QEMU_WARNING = re.compile(r"^qemu-x86_64: warning: TCG doesn't support requested feature.*$\n?", re.M)

# What the emulated (and the host) Python reports: the kernels PyTorch dispatches to, the CPUID features
# NumPy detected (CPUID is what qemu emulates; /proc/cpuinfo inside qemu-user is still the host's), and
# the versions of ONNX Runtime and LiteRT. Printed as one JSON line.
PROBE = r"""
import json, os
out = {}
try:
    from numpy._core._multiarray_umath import __cpu_features__ as f
    out["cpuid"] = [k for k in ("SSE42", "AVX", "FMA3", "AVX2", "AVX512F", "AVX512_SKX", "AVX512VNNI", "AVXVNNI") if f.get(k)]
except Exception as e:
    out["cpuid"] = repr(e)
import torch
out["torch"] = torch.__version__
out["torch_kernels"] = torch.backends.cpu.get_cpu_capability()
out["torch_vnni"] = bool(getattr(torch.cpu, "_is_vnni_supported", lambda: None)())
import onnxruntime
out["onnxruntime"] = onnxruntime.__version__
try:
    from importlib.metadata import version
    out["ai_edge_litert"] = version("ai-edge-litert")
    import ai_edge_litert.interpreter  # noqa: F401  (proves it loads on this CPU)
except Exception as e:
    out["ai_edge_litert"] = repr(e)
try:
    import jaxlib.cpu_feature_guard as guard
    guard.check_cpu_features()
    out["jaxlib_loads"] = True
except ImportError:
    out["jaxlib_loads"] = None
except Exception:
    out["jaxlib_loads"] = False
out["DEPLOYKIT_BLOCK_NETWORK"] = os.environ.get("DEPLOYKIT_BLOCK_NETWORK")
print("PROBE " + json.dumps(out))
"""


class CheckError(Exception):
    """A problem with the setup or the arguments: printed as a one-line message, exit status 2."""


# ----------------------------------------------------------------------------- pure parts (unit-tested)

def cpu_flags(cpuinfo_text: str) -> set[str]:
    """The feature flags of the first CPU in a /proc/cpuinfo text (x86 ``flags`` line)."""
    for line in cpuinfo_text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def choose_cpu_model(flags: set[str], override: str | None = None) -> str:
    """The qemu CPU model to emulate: an ISA class different from the host's.

    AVX-512 host -> ``Haswell-v4`` (AVX2, no AVX-512/VNNI); AVX2 host -> ``SandyBridge`` (AVX, no AVX2/FMA;
    the oldest class the course runs on: jaxlib, imported by litert_torch, needs AVX);
    a host without AVX2 -> ``Haswell-v4`` (emulating upwards, still a different class). ``override``
    (``--cpu`` or ``$QEMU_CPU``) wins.
    """
    if override:
        return override
    if "avx512f" in flags:
        return "Haswell-v4"
    if "avx2" in flags:
        return "SandyBridge"
    return "Haswell-v4"


def native_isa_env(flags: set[str]) -> dict[str, str]:
    """Environment that forces PyTorch, oneDNN, MKL, NumPy and OpenBLAS one ISA class below the host."""
    if "avx512f" in flags:
        return {
            "ATEN_CPU_CAPABILITY": "avx2",
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
            "OPENBLAS_CORETYPE": "Haswell",
        }
    if "avx2" in flags:
        return {
            "ATEN_CPU_CAPABILITY": "default",
            "ONEDNN_MAX_CPU_ISA": "SSE41",
            "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "NPY_DISABLE_CPU_FEATURES": "X86_V3",
            "OPENBLAS_CORETYPE": "Nehalem",
        }
    raise CheckError("this CPU has no AVX2: PyTorch already runs its DEFAULT kernels here, there is nothing to "
                     "force down natively; use the emulated check (make test-portable) instead")


def kernelspec(qemu: str, cpu_model: str, python: str) -> dict:
    """The kernel.json of a Python kernel whose interpreter runs under ``qemu -cpu cpu_model``."""
    return {
        "argv": [qemu, "-cpu", cpu_model, python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 (emulated CPU {cpu_model})",
        "language": "python",
        "metadata": {"debugger": False},
    }


def write_kernelspec(jupyter_path: Path, spec: dict, name: str = KERNEL_NAME) -> Path:
    """Write ``spec`` as ``<jupyter_path>/kernels/<name>/kernel.json`` and return that file."""
    folder = jupyter_path / "kernels" / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kernel.json"
    path.write_text(json.dumps(spec, indent=1) + "\n")
    return path


def resolve_notebooks(args: list[str], root: Path = ROOT, use_all: bool = False) -> list[Path]:
    """The notebooks to check: ``args`` (relative to the current folder or to the repo), or ``NOTEBOOKS``.

    Raises CheckError naming every path that is not an existing ``.ipynb`` file.
    """
    if use_all:
        if args:
            raise CheckError("give either --all or notebook paths, not both")
        return sorted((root / "notebooks").glob("*.ipynb")) + sorted((root / "solutions").glob("*.ipynb"))
    names = list(args) or list(NOTEBOOKS)
    found, missing = [], []
    for name in names:
        candidates = [Path(name), root / name]
        path = next((p.resolve() for p in candidates if p.is_file() and p.suffix == ".ipynb"), None)
        if path is None:
            missing.append(name)
        else:
            found.append(path)
    if missing:
        raise CheckError("unknown notebook path(s): " + ", ".join(missing)
                         + " (expected existing .ipynb files, e.g. " + NOTEBOOKS[0] + ")")
    return found


def addopts_for_kernel(pyproject_text: str) -> str:
    """The project's pytest ``addopts`` without ``--nbval-current-env`` (it would override the kernel name)."""
    options = tomllib.loads(pyproject_text).get("tool", {}).get("pytest", {}).get("ini_options", {})
    addopts = options.get("addopts", "")
    words = shlex.split(addopts) if isinstance(addopts, str) else list(addopts)
    return shlex.join(w for w in words if w not in ("--nbval-current-env", "--current-env"))


def pytest_args(notebook: Path, *, emulated: bool, addopts: str, junit: Path,
                cell_timeout: int, startup_timeout: int) -> list[str]:
    """The pytest command line (after ``python -m pytest``) for one notebook."""
    args = ["--nbval", f"--junitxml={junit}", f"--nbval-cell-timeout={cell_timeout}",
            f"--nbval-kernel-startup-timeout={startup_timeout}"]
    if emulated:
        args = ["-o", f"addopts={addopts}", *args, f"--nbval-kernel-name={KERNEL_NAME}"]
    return [*args, str(notebook)]


def strip_qemu_warnings(text: str) -> str:
    return QEMU_WARNING.sub("", text)


def failing_cells(junit_xml: str) -> list[dict]:
    """Failed or errored test cases in a pytest JUnit XML text: ``{"cell", "message"}`` each."""
    failures = []
    for case in ET.fromstring(junit_xml).iter("testcase"):
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                text = (node.text or node.get("message") or "").strip()
                failures.append({"cell": case.get("name", "?"), "kind": tag, "message": text})
    return failures


ANSI = re.compile(r"(\x1b|#x1B)\[[0-9;]*m")


def short_diff(message: str, limit: int = 12) -> str:
    """The informative lines of an nbval failure message: the +/- diff lines, else its last lines.

    In pytest's diff of ``reference_output == test_output``, ``+`` lines are the committed (expected)
    output and ``-`` lines what this run printed.
    """
    lines = [ANSI.sub("", line).rstrip() for line in message.splitlines() if line.strip()]
    diff = [line.strip() for line in lines if re.match(r"^\s*[-+] ", line) or "mismatch" in line.lower()]
    diff = [("expected: " + line[2:]) if line.startswith("+ ") else ("got:      " + line[2:])
            if line.startswith("- ") else line for line in diff]
    chosen = diff or lines[-limit:]
    if len(chosen) > limit:
        chosen = chosen[:limit] + [f"... ({len(chosen) - limit} more lines)"]
    return "\n".join(chosen)


# ----------------------------------------------------------------------------- running things

def copy_artifacts(source: Path, target: Path) -> None:
    """A real copy (not hard links: notebooks overwrite files in place), or an empty folder."""
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    else:
        target.mkdir(parents=True)


def find_qemu() -> str:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise CheckError(f"the emulated check needs an x86-64 Linux host (this is {platform.system()} "
                         f"{platform.machine()}); elsewhere use `make test`")
    path = shutil.which(QEMU)
    if not path:
        raise CheckError(f"{QEMU} not found: {QEMU_INSTALL_HINT}")
    return path


def kernel_python() -> str:
    """The venv's python, not resolved (resolving a venv symlink would lose its site-packages)."""
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else Path(sys.executable))


def probe(prefix: list[str], python: str, env: dict[str, str], timeout: int = 900) -> dict:
    """Run PROBE under ``prefix`` (e.g. qemu) and return its JSON; stderr's qemu warnings are dropped."""
    started = time.perf_counter()
    done = subprocess.run([*prefix, python, "-c", PROBE], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    stderr = strip_qemu_warnings(done.stderr).strip()
    line = next((l for l in done.stdout.splitlines() if l.startswith("PROBE ")), None)
    if done.returncode != 0 or line is None:
        raise CheckError(f"the probe failed under {' '.join(prefix) or 'the host'} (exit {done.returncode}):\n"
                         + (stderr or done.stdout)[-3000:])
    result = json.loads(line[len("PROBE "):])
    result["seconds"] = time.perf_counter() - started
    if stderr:
        result["stderr"] = stderr[-500:]
    return result


def describe(label: str, info: dict) -> str:
    cpuid = info["cpuid"] if isinstance(info["cpuid"], str) else " ".join(info["cpuid"]) or "none of the listed"
    return (f"  {label:<22} torch {info['torch']} kernels {info['torch_kernels']:<8} "
            f"CPUID: {cpuid}; onnxruntime {info['onnxruntime']}, ai-edge-litert {info['ai_edge_litert']} "
            f"({info['seconds']:.0f} s)")


class TreeWatcher(threading.Thread):
    """Samples the resident memory of a process tree, and the kernel's command line and environment."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval, self.stop = pid, interval, threading.Event()
        self.total_mb = self.kernel_mb = 0.0
        self.kernel_cmdline: list[str] | None = None
        self.kernel_env: dict[str, str] | None = None

    def run(self):
        import psutil

        while not self.stop.wait(self.interval):
            try:
                processes = [psutil.Process(self.pid), *psutil.Process(self.pid).children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for process in processes:
                try:
                    rss = process.memory_info().rss
                    total += rss
                    cmdline = process.cmdline()
                    if "ipykernel_launcher" in cmdline:
                        self.kernel_mb = max(self.kernel_mb, rss / 1e6)
                        if self.kernel_env is None:
                            self.kernel_cmdline, self.kernel_env = cmdline, process.environ()
                except psutil.Error:
                    pass
            self.total_mb = max(self.total_mb, total / 1e6)


def run_notebook(notebook: Path, *, emulated: bool, addopts: str, env: dict[str, str], junit: Path,
                 cell_timeout: int, startup_timeout: int) -> dict:
    command = [kernel_python(), "-m", "pytest",
               *pytest_args(notebook, emulated=emulated, addopts=addopts, junit=junit,
                            cell_timeout=cell_timeout, startup_timeout=startup_timeout)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    watcher = TreeWatcher(process.pid)
    watcher.start()
    returncode = process.wait()
    watcher.stop.set()
    watcher.join()
    seconds = time.perf_counter() - started
    failures = failing_cells(junit.read_text()) if junit.exists() else []
    row = {"notebook": notebook.relative_to(ROOT).as_posix() if notebook.is_relative_to(ROOT) else str(notebook),
           "seconds": seconds, "kernel_mb": watcher.kernel_mb, "total_mb": watcher.total_mb,
           "returncode": returncode, "failures": failures, "problems": []}
    # Prove the kernel ran where we think, with the network blocked and our artifacts folder.
    if watcher.kernel_env is None:
        row["problems"].append("the kernel was never seen running (did it start?)")
    else:
        if watcher.kernel_env.get("DEPLOYKIT_BLOCK_NETWORK") != "1":
            row["problems"].append("kernel environment lacks DEPLOYKIT_BLOCK_NETWORK=1 (root conftest.py not loaded?)")
        if watcher.kernel_env.get("DEPLOYKIT_ARTIFACTS") != env["DEPLOYKIT_ARTIFACTS"]:
            row["problems"].append("kernel uses another artifacts folder: "
                                   + str(watcher.kernel_env.get("DEPLOYKIT_ARTIFACTS")))
        is_qemu = Path(watcher.kernel_cmdline[0]).name == QEMU
        if emulated != is_qemu:
            row["problems"].append("kernel command line unexpected: " + " ".join(watcher.kernel_cmdline[:4]))
        row["kernel"] = " ".join(watcher.kernel_cmdline[:3]) if is_qemu else "native"
    return row


def cell_head(message: str) -> str:
    """The first line of the cell's source, from nbval's ``Input:`` section of a failure message."""
    lines = [ANSI.sub("", line).rstrip() for line in message.splitlines()]
    if "Input:" in lines:
        for line in lines[lines.index("Input:") + 1:]:
            if line.strip():
                return line.strip()
    return ""


def classify(failures: list[dict], baseline: list[dict] | None) -> None:
    """Mark each failure ``cpu``: only in the checked setup, or ``native``: the host fails it too."""
    native_cells = {f["cell"] for f in baseline} if baseline is not None else None
    for index, failure in enumerate(failures):
        message = failure.get("message", "")
        if native_cells is not None and failure["cell"] not in native_cells and "Timeout of" in message:
            failure["origin"] = "TIMED OUT in the checked setup (emulation is slow; passes natively)"
        elif native_cells is not None and failure["cell"] not in native_cells and index and (
                "NameError" in message or "KeyError" in message):
            failure["origin"] = "probably a consequence of an earlier failing cell (passes natively)"
        elif native_cells is None:
            failure["origin"] = "not re-run natively"
        elif failure["cell"] in native_cells:
            failure["origin"] = "fails natively too: not a CPU difference (stale notebook or artifacts?)"
        else:
            failure["origin"] = "CPU-DEPENDENT: passes natively"


def summary(rows: list[dict], header: str, wall: float) -> str:
    lines = [header, "",
             "| notebook | result | wall time (s) | peak kernel RSS (MB) | peak tree RSS (MB) |",
             "|---|---|---:|---:|---:|"]
    for row in rows:
        n_fail = len(row["failures"])
        n_cpu = sum(not f.get("origin", "").startswith(("fails natively", "not re-run")) for f in row["failures"])
        if row["returncode"] == 0 and not row["problems"]:
            result = "passed"
        elif n_fail:
            result = f"**{n_fail} failing cell(s)**"
            if row.get("baseline") is not None:
                result += f", {n_cpu} of them pass natively"
        else:
            result = f"**error (pytest exit {row['returncode']})**"
        lines.append(f"| `{row['notebook']}` | {result} | {row['seconds']:.0f} | {row['kernel_mb']:.0f} | "
                     f"{row['total_mb']:.0f} |")
    lines.append(f"| **total** | | **{sum(r['seconds'] for r in rows):.0f}** | "
                 f"**max {max((r['kernel_mb'] for r in rows), default=0):.0f}** | "
                 f"**max {max((r['total_mb'] for r in rows), default=0):.0f}** |")
    lines += ["", f"Whole run including the probes and the artifacts copy: {wall:.0f} s.", ""]
    for row in rows:
        for problem in row["problems"]:
            lines.append(f"- `{row['notebook']}`: {problem}")
        for failure in row["failures"]:
            lines += [f"- `{row['notebook']}` {failure['cell']} ({failure['kind']}; "
                      f"{failure.get('origin', 'not re-run natively')})"
                      + (f", cell starting `{head[:80]}`:" if (head := cell_head(failure["message"])) else ":"), "",
                      "  ```", *("  " + l for l in short_diff(failure["message"]).splitlines()), "  ```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="default: the numerically sensitive notebooks (NOTEBOOKS)")
    parser.add_argument("--all", action="store_true", help="every notebook in notebooks/ and solutions/")
    parser.add_argument("--cpu", help="qemu CPU model (default: chosen from the host, or $QEMU_CPU)")
    parser.add_argument("--native-isa", action="store_true",
                        help="run natively with PyTorch/oneDNN/MKL/NumPy forced one ISA down (make test-isa)")
    parser.add_argument("--cold", action="store_true", help="start from an EMPTY artifacts folder")
    parser.add_argument("--cell-timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    parser.add_argument("--startup-timeout", type=int, default=600, help="seconds for a kernel to start")
    parser.add_argument("--report", type=Path, help="also write the Markdown summary here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (artifacts, JUnit XML)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not re-run a failing notebook natively (plain host, same starting artifacts) "
                             "to tell CPU-dependent cells from cells that fail everywhere")
    args = parser.parse_args(argv)

    try:
        notebooks = resolve_notebooks(args.notebooks, use_all=args.all)
        flags = cpu_flags(Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "")
        python = kernel_python()
        began = time.perf_counter()
        workdir = Path(tempfile.mkdtemp(prefix="portable-check-"))
        env = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
        env["PYTHONUNBUFFERED"] = "1"
        native_env = dict(env)

        print(f"host CPU flags: {' '.join(f for f in ('sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx_vnni') if f in flags)}")
        host = probe([], python, env)
        print(describe("host (native):", host))
        if args.native_isa:
            forced = native_isa_env(flags)
            env.update(forced)
            other = probe([], python, env)
            print(describe("host, forced down:", other))
            print("  forced: " + " ".join(f"{k}={v}" for k, v in forced.items())
                  + "  (ONNX Runtime and XNNPACK cannot be forced: they still use the host's ISA)")
            mode = "native, forced down: " + " ".join(f"{k}={v}" for k, v in forced.items())
        else:
            qemu = find_qemu()
            model = choose_cpu_model(flags, args.cpu or os.environ.get("QEMU_CPU"))
            print(f"emulating: {QEMU} -cpu {model}  (kernel startup and every cell run ~10x slower)")
            other = probe([qemu, "-cpu", model], python, env)
            print(describe(f"emulated {model}:", other))
            print("  (inside qemu-user /proc/cpuinfo still shows the host's flags; the libraries read CPUID, shown above)")
            if other.get("jaxlib_loads") is False:
                print(f"WARNING: jaxlib refuses to load on {model} (it needs AVX): notebooks that import litert_torch "
                      "(08, 09, lab06, lab07) will fail at import. Use an AVX model such as SandyBridge.")
            spec_file = write_kernelspec(workdir / "jupyter", kernelspec(qemu, model, python))
            print(f"kernelspec: {spec_file} -> {' '.join(json.loads(spec_file.read_text())['argv'][:4])} ...")
            env["JUPYTER_PATH"] = str(workdir / "jupyter")
            # Emulation is tens of times slower: latency budgets and repeated work scale with this
            # (deploykit.bench.time_scale); what the check compares, the numerics, does not.
            env["DEPLOYKIT_TIME_SCALE"] = str(EMULATION_TIME_SCALE)
            mode = f"kernel emulated by `{QEMU} -cpu {model}`, DEPLOYKIT_TIME_SCALE={EMULATION_TIME_SCALE}"
        if other["torch_kernels"] == host["torch_kernels"]:
            raise CheckError(f"PyTorch runs its {host['torch_kernels']} kernels both on the host and in the checked "
                             "setup: that proves nothing. Pick another CPU model (--cpu / QEMU_CPU), e.g. SandyBridge "
                             "on an AVX2 host, Haswell-v4 on an AVX-512 host.")

        # A snapshot of the starting artifacts: the checked run gets a copy, and so does each native re-run.
        start = workdir / "artifacts-start"
        if args.cold:
            start.mkdir()
            print(f"artifacts: EMPTY (--cold: every model is built in the checked setup)")
        else:
            source = Path(os.environ.get("DEPLOYKIT_ARTIFACTS", ROOT / "artifacts"))
            copy_started = time.perf_counter()
            copy_artifacts(source, start)
            print(f"artifacts: a copy of {source} taken now ({time.perf_counter() - copy_started:.0f} s); "
                  "the shared folder is never written")
        artifacts = workdir / "artifacts"
        copy_artifacts(start, artifacts)
        env["DEPLOYKIT_ARTIFACTS"] = str(artifacts)
        addopts = addopts_for_kernel((ROOT / "pyproject.toml").read_text())
    except CheckError as error:
        print(f"portable_check: {error}", file=sys.stderr)
        return 2

    rows = []
    for index, notebook in enumerate(notebooks, 1):
        print(f"\n=== [{index}/{len(notebooks)}] {notebook.relative_to(ROOT) if notebook.is_relative_to(ROOT) else notebook}"
              f" ({mode})", flush=True)
        row = run_notebook(notebook, emulated=not args.native_isa, addopts=addopts, env=env,
                           junit=workdir / f"junit-{index:02d}.xml", cell_timeout=args.cell_timeout,
                           startup_timeout=args.startup_timeout)
        print(f"--- {row['notebook']}: {row['seconds']:.0f} s, kernel peak {row['kernel_mb']:.0f} MB, "
              f"{len(row['failures'])} failing cell(s), kernel: {row.get('kernel', '?')}"
              + "".join(f"\n    PROBLEM: {p}" for p in row["problems"]), flush=True)
        if row["failures"] and not args.no_baseline:
            print(f"--- re-running {row['notebook']} natively (plain host, same starting artifacts) to classify "
                  "its failing cells", flush=True)
            scratch = workdir / f"artifacts-native-{index:02d}"
            copy_artifacts(start, scratch)
            base = run_notebook(notebook, emulated=False, addopts=addopts,
                                env={**native_env, "DEPLOYKIT_ARTIFACTS": str(scratch)},
                                junit=workdir / f"junit-native-{index:02d}.xml", cell_timeout=args.cell_timeout,
                                startup_timeout=args.startup_timeout)
            shutil.rmtree(scratch, ignore_errors=True)
            row["baseline"] = base["failures"] if not base["problems"] or base["failures"] else None
            row["baseline_seconds"] = base["seconds"]
            classify(row["failures"], row["baseline"])
            for failure in row["failures"]:
                print(f"    {failure['cell']}: {failure['origin']}")
        rows.append(row)

    emulated_desc = (f"{other['torch_kernels']} kernels (CPUID seen: {' '.join(other['cpuid']) if isinstance(other['cpuid'], list) else other['cpuid']})")
    header = (f"# Portability check ({'cold' if args.cold else 'warm'} artifacts)\n\n"
              f"Host: PyTorch {host['torch_kernels']} kernels (CPUID {' '.join(host['cpuid']) if isinstance(host['cpuid'], list) else host['cpuid']}); "
              f"checked: {mode}, PyTorch {emulated_desc}. Wall times include this machine's load.")
    text = summary(rows, header, time.perf_counter() - began)
    print("\n" + text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r["returncode"] == 0 and not r["problems"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
