#!/usr/bin/env python
"""Wall time and peak memory of every lecture and solution notebook, and of the whole set.

Each notebook runs in a fresh kernel in its own folder, as under ``pytest --nbval``; nothing is
written back to the notebook. Peak memory is the larger of the kernel's own peak resident set
(``VmHWM``, exact) and the largest memory in use by the kernel plus the processes it started
(sampled every 0.1 s, for notebooks that start subprocesses). That sum adds up each process's
proportional set size (PSS: a page shared by n processes, such as libtorch's code mapped by the
kernel and by a child that also imports torch, counts 1/n in each), so shared pages are counted
once, as the machine holds them; a sum of resident sets would count them once per process.
Writes a Markdown table (``--output``) and prints it.

    .venv/bin/python tools/profile_notebooks.py --output docs/profile.md
    .venv/bin/python tools/profile_notebooks.py notebooks/06_*.ipynb     # just some
    .venv/bin/python tools/profile_notebooks.py --cold --output docs/profile-cold.md
    .venv/bin/python tools/profile_notebooks.py --slowest 5 notebooks/06_*.ipynb   # where the time goes

``--cold`` gives every notebook its own empty artifacts folder, as in a fresh clone: it proves
each notebook runs on its own (building what it needs) and measures its worst case.

Each notebook runs inside ``tools/quiet_machine.py``'s ``quiet_machine()`` (the course's CPU lock, idle
CPUs at the start), and the table states what share of the CPUs other processes used meanwhile.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from deploykit.bench import machine_info  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
from quiet_machine import LoadMonitor, quiet_machine  # noqa: E402

BUDGET_SECONDS, BUDGET_MB = 60.0, 2000.0  # 2 GB, in the course's MB (10^6 bytes)
#: Cold-cache budgets an issue set above the default, with the reason (the warm budget stays 60 s).
COLD_BUDGET_SECONDS = {
    "notebooks/14_llm_runtimes_on_device.ipynb": (120.0, "three LLM runtimes' conversions, cached after the first run"),
}


def budget_seconds(notebook: str, cold: bool) -> float:
    """The wall-time budget of one notebook (its name as in the table), warm or cold."""
    return COLD_BUDGET_SECONDS.get(notebook, (BUDGET_SECONDS, ""))[0] if cold else BUDGET_SECONDS


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6  # kB (KiB) -> MB (10^6 bytes)
    except OSError:
        pass
    return 0.0


def _pss_bytes(pid: int) -> int:
    # Proportional set size of one process (Linux 4.14+: /proc/<pid>/smaps_rollup); 0 once it has exited.
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class ChildWatcher(threading.Thread):
    """Samples the resident memory of the kernel and of the processes it started."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.total_mb, self.kernel_mb, self.stop = pid, 0.0, 0.0, threading.Event()

    def run(self):
        while not self.stop.wait(0.1):
            try:
                kernel = psutil.Process(self.pid)
                children = kernel.children(recursive=True)
                if children:  # shared pages once: the sum of proportional set sizes
                    total = sum(_pss_bytes(p.pid) for p in (kernel, *children))
                    self.total_mb = max(self.total_mb, total / 1e6)
                self.kernel_mb = max(self.kernel_mb, _hwm_mb(self.pid))
            except psutil.Error:
                pass

    def read_peak_mb(self) -> float:
        """The peak so far; reads the kernel's exact VmHWM now (0 once it has exited: the last reading stays)."""
        self.kernel_mb = max(self.kernel_mb, _hwm_mb(self.pid))
        return max(self.kernel_mb, self.total_mb)


def profile(path: Path, timeout: int) -> dict:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    status = "ok"
    watcher, peak = None, 0.0
    cells = []  # (seconds, cell index, first line of code, peak MB after the cell)
    try:
        with client.setup_kernel():
            watcher = ChildWatcher(client.km.provisioner.process.pid)
            watcher.start()
            for index, cell in enumerate(nb.cells):
                began = time.perf_counter()
                client.execute_cell(cell, index)
                if cell.cell_type == "code":
                    cells.append((time.perf_counter() - began, index, _first_line(cell.source), watcher.read_peak_mb()))
    except Exception as error:  # noqa: BLE001 - a failing notebook is reported, not fatal
        status = f"error: {type(error).__name__}"
    finally:
        if watcher:
            watcher.stop.set()
            peak = watcher.read_peak_mb()
    seconds = time.perf_counter() - start
    name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    return {"notebook": name, "seconds": seconds, "peak_mb": peak, "status": status,
            "cells": sorted(cells, reverse=True)}


def _first_line(source: str) -> str:
    # The cell's first line that is code, not a comment or an nbval marker.
    lines = [line.strip() for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return (lines[0] if lines else "(no code)")[:70]


def table(rows: list[dict], wall: float, cold: bool = False) -> str:
    info = machine_info()
    lines = [
        "# Notebook profile",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `make profile` (`tools/profile_notebooks.py`) on "
        f"{info['cpu']}, {info['logical_cores']} logical cores, Python {info['python']}, torch {info.get('torch')}, "
        f"onnxruntime {info.get('onnxruntime')}. Budget per notebook: {BUDGET_SECONDS:.0f} s and {BUDGET_MB / 1000:.0f} GB "
        "peak" + "".join(f" ({Path(name).stem}: {seconds:.0f} s cold, {why})" for name, (seconds, why) in COLD_BUDGET_SECONDS.items()
                         if cold) + "; each runs in a fresh kernel " + (
            "with its own EMPTY artifacts folder, as in a fresh clone (`--cold`)." if cold
            else "with a warm `artifacts/` cache, as in a second `make test`.") +
        " Each notebook runs under the course's CPU lock, started on idle CPUs (`tools/quiet_machine.py`); the last "
        "column is the share of all CPUs other processes used meanwhile. Peak memory is the kernel's peak resident set, or, while the notebook runs other processes, the "
        "memory of the kernel and those processes together (proportional set sizes: shared pages counted once).",
        "",
        "| notebook | wall time (s) | peak memory (MB) | within budget | CPUs used by others |",
        "|---|---:|---:|:---:|---:|",
    ]
    for row in rows:
        ok = row["status"] == "ok" and row["seconds"] <= budget_seconds(row["notebook"], cold) and row["peak_mb"] <= BUDGET_MB
        flag = "yes" if ok else ("no" if row["status"] == "ok" else row["status"])
        others = f"{row['others_busy']:.0%}" if "others_busy" in row else "-"
        lines.append(f"| `{row['notebook']}` | {row['seconds']:.1f} | {row['peak_mb']:.0f} | {flag} | {others} |")
    lines.append(f"| **total ({len(rows)} notebooks)** | **{sum(r['seconds'] for r in rows):.1f}** | "
                 f"**max {max((r['peak_mb'] for r in rows), default=0):.0f}** | | |")
    lines += ["", f"Whole run, kernel start-ups included: {wall:.1f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb and solutions/*.ipynb")
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--cold", action="store_true", help="an empty artifacts folder for each notebook")
    parser.add_argument("--slowest", type=int, default=0, metavar="N", help="also print each notebook's N slowest cells")
    args = parser.parse_args(argv)
    if args.slowest < 0:
        parser.error(f"--slowest takes a number of cells, 0 or more; got {args.slowest}")
    paths = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
    began = time.perf_counter()
    rows = []
    for path in paths:
        if args.cold:
            os.environ["DEPLOYKIT_ARTIFACTS"] = tempfile.mkdtemp(prefix="artifacts-cold-")
        with quiet_machine(), LoadMonitor() as monitor:
            row = profile(path, args.timeout)
        row["others_busy"] = monitor.others_fraction
        print(f"{row['notebook']}: {row['seconds']:.1f} s, {row['peak_mb']:.0f} MB, {row['status']}, "
              f"others used {monitor.others_fraction:.0%} of the CPUs", flush=True)
        for seconds, index, line, peak in row["cells"][:args.slowest]:
            print(f"    cell {index:>3}: {seconds:6.1f} s, peak so far {peak:5.0f} MB  {line}", flush=True)
        if args.slowest and row["cells"]:
            _, index, line, peak = min(row["cells"], key=lambda c: (-c[3], c[1]))
            print(f"    peak memory ({peak:.0f} MB) first reached in cell {index}: {line}", flush=True)
        rows.append(row)
    text = table(rows, time.perf_counter() - began, args.cold)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
