#!/usr/bin/env python
"""A lecture's ResNet-18 figures inside a Jupyter kernel against a fresh process, alternated (issue 37).

A benchmark in a notebook shares its process with everything the earlier cells left behind (thread
pools, sessions, the kernel's own threads); a script in a fresh process does not. This runs, in turn,
``pairs`` times over:

1. the lecture from its first cell to the one that prints its ResNet-18 figures at 1 and all
   threads (found by its code), in a fresh kernel: lecture 06's PyTorch / ORT comparison
   (``--lecture 06``, the default) or lecture 10's ORT / OpenVINO table (``--lecture 10``, its ORT
   rows);
2. ``tools/bench_ort_vs_torch.py --json`` (lecture 06's plan and protocol) in a fresh process,

and prints both medians of each runtime and thread count, and the ratio notebook / fresh process of
each pair. The verdict compares the median ratio over the pairs with ``--tolerance`` (10 %): pairs
alternate, so a machine that drifts during the run moves both sides. Exit code 1 when a figure is
off by more than the tolerance.

    .venv/bin/python tools/quiet_machine.py -- .venv/bin/python tools/notebook_vs_fresh.py
    .venv/bin/python tools/notebook_vs_fresh.py --pairs 5 --tolerance 0.1
    .venv/bin/python tools/notebook_vs_fresh.py --lecture 10
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: lecture 06, as RoundsResult prints itself: "PyTorch: median 71.100 ms (round medians ...), max ... (batch 1, 2 thread(s), ..."
LINE_06 = re.compile(r"^(?P<runtime>PyTorch|ONNX Runtime): median (?P<ms>[\d.]+) ms .*"
                     r"\(batch (?P<batch>\d+), (?P<threads>\d+) thread\(s\)", re.M)
#: lecture 10's table (batch 1 only): "ResNet-18   2 thread(s): ONNX Runtime   16.651 (  17.141)   OpenVINO ..."
LINE_10 = re.compile(r"^ResNet-18 +(?P<threads>\d+) thread\(s\): (?P<runtime>ONNX Runtime) +(?P<ms>[\d.]+) \(", re.M)


@dataclass(frozen=True)
class Lecture:
    notebook: Path
    marker: str  # code only the cell with the figures contains
    line: re.Pattern  # one figure: groups runtime, ms, threads (and batch, if the lecture prints several)
    example: str  # a line of the form `line` reads, for the error message

    def parse(self, text: str, batch: int = 1) -> dict:
        """``{(runtime, threads): median ms}`` read from the figures cell's printed output, batch ``batch``."""
        found = {(m["runtime"], int(m["threads"])): float(m["ms"]) for m in self.line.finditer(text)
                 if int(m.groupdict().get("batch") or 1) == batch}
        if not found:
            raise ValueError(f"expected lines like {self.example!r}, found none")
        return found


LECTURES = {
    "06": Lecture(ROOT / "notebooks" / "06_ort_vs_pytorch_speed.ipynb", 'compare("resnet18", 1, t)', LINE_06,
                  "PyTorch: median 71.100 ms (...) (batch 1, 2 thread(s), ...)"),
    "10": Lecture(ROOT / "notebooks" / "10_execution_providers_profiling.ipynb", 'PLAN = {"digits CNN"', LINE_10,
                  "ResNet-18   2 thread(s): ONNX Runtime   16.651 (  17.141) ..."),
}


def comparison_cell(cells: list, lecture: Lecture = LECTURES["06"]) -> int:
    """Index of the code cell that prints the lecture's ResNet-18 batch-1 figures at every thread count."""
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code" and lecture.marker in "".join(cell["source"]):
            return index
    raise ValueError(f"no code cell of {lecture.notebook.name} contains {lecture.marker!r}: has the lecture changed?")


def parse_medians(text: str, batch: int = 1, lecture: Lecture = LECTURES["06"]) -> dict:
    """``{(runtime, threads): median ms}`` from a lecture's printed figures."""
    return lecture.parse(text, batch)


def notebook_medians(lecture: Lecture = LECTURES["06"]) -> dict:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(lecture.notebook, as_version=4)
    last = comparison_cell(notebook.cells, lecture)
    notebook.cells = notebook.cells[: last + 1]
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(lecture.notebook.parent)}}).execute()
    text = "".join(output.get("text", "") for output in notebook.cells[last].outputs)
    return parse_medians(text, lecture=lecture)


def fresh_medians() -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_ort_vs_torch.py"), "--json"],
                          capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout)["rows"]
    medians = {}
    for row in rows:
        if row["model"] == "resnet18" and row["batch"] == 1:
            medians["PyTorch", row["threads"]] = row["pytorch_ms"]
            medians["ONNX Runtime", row["threads"]] = row["ort_ms"]
    return medians


def verdicts(pairs: list, tolerance: float) -> list:
    """Per (runtime, threads): (median notebook ms, median fresh ms, median of the pairs' ratios, within)."""
    keys = sorted(set.intersection(*(set(n) & set(f) for n, f in pairs)), key=lambda k: (k[1], k[0]))
    if not keys:
        raise ValueError("verdicts expected pairs with at least one (runtime, threads) in common")
    out = []
    for key in keys:
        ratio = statistics.median(n[key] / f[key] for n, f in pairs)
        out.append((key, statistics.median(n[key] for n, _ in pairs), statistics.median(f[key] for _, f in pairs),
                    ratio, abs(ratio - 1) <= tolerance))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="notebook / fresh-process pairs, alternated (default 3)")
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed |ratio - 1| (default 0.10)")
    parser.add_argument("--lecture", choices=sorted(LECTURES), default="06",
                        help="06: PyTorch and ORT (section 1); 10: ORT's rows of the ORT / OpenVINO table (default 06)")
    args = parser.parse_args(argv)
    if args.pairs < 1 or not 0 < args.tolerance < 1:
        parser.error("--pairs must be >= 1 and --tolerance between 0 and 1")
    pairs = []
    for number in range(1, args.pairs + 1):
        inside, fresh = notebook_medians(LECTURES[args.lecture]), fresh_medians()
        pairs.append((inside, fresh))
        print(f"pair {number}: " + "; ".join(f"{runtime} {threads} thr: notebook {inside[runtime, threads]:.1f} ms, "
                                             f"fresh {fresh[runtime, threads]:.1f} ms"
                                             for runtime, threads in sorted(inside, key=lambda k: (k[1], k[0]))
                                             if (runtime, threads) in fresh), flush=True)
    print(f"\nlecture {args.lecture}, ResNet-18, batch 1; medians over {args.pairs} alternated pairs; ratio = notebook / fresh process")
    results = verdicts(pairs, args.tolerance)
    for (runtime, threads), inside, fresh, ratio, within in results:
        print(f"{runtime:>13} {threads} thread(s): notebook {inside:7.1f} ms, fresh {fresh:7.1f} ms, ratio {ratio:5.2f}"
              f"  {'within' if within else 'OUTSIDE'} {args.tolerance:.0%}")
    return 0 if all(r[-1] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
