#!/usr/bin/env python
"""Execute notebooks in place (outputs saved), the way strict ``pytest --nbval`` will run them.

Authors run this after editing a lecture or a solution, then commit the notebook with its outputs:

    .venv/bin/python tools/execute_notebooks.py notebooks/04_onnx_export.ipynb solutions/lab03_*.ipynb

Each kernel starts in the notebook's own folder, like nbval's. Execution stops at the first error
and the notebook is not written, so a half-run notebook is never saved.

Each run holds the course's CPU lock and starts on idle CPUs (``tools/quiet_machine.py``), and
:class:`quiet_machine.LoadMonitor` measures what other processes did meanwhile. A notebook executed
while others used more than ``MAX_OTHERS_BUSY_FRACTION`` of the CPUs is run again (``--retries``),
and is not written if the machine never stayed quiet: its timings would not be results. A written
notebook records the figures in ``metadata["deploykit"]["executed"]`` (CPU, load average at start
and end, the others' busy share); ``tests/test_executed_quiet.py`` checks them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet_machine import MAX_OTHERS_BUSY_FRACTION, LoadMonitor, quiet_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class MachineBusy(RuntimeError):
    """Other processes used the CPUs while the notebook ran: its timings are not results."""


def busy_output_lines(nb) -> list[str]:
    """``"cell N: <line>"`` for every output line of ``nb`` that carries a busy verdict.

    The load stamp averages over the whole run, so one cell can still print that the machine was busy
    when it ran (lecture 10's machine facts once did, under a stamp within the limit). Such a notebook is
    not written, and tests/test_executed_quiet.py fails on any committed one."""
    sys.path.insert(0, str(ROOT))
    from deploykit.bench import BUSY, BUSY_VERDICT

    def joined(value) -> str:
        return "".join(value) if isinstance(value, list) else str(value)

    found = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            # Every text an output carries: streams, every text/* form (plain, html, markdown...), an error's
            # value and traceback.
            parts = [output.get("text", ""), output.get("evalue", ""), *output.get("traceback", [])]
            parts += [value for kind, value in data.items() if kind.startswith("text/")]
            text = "\n".join(joined(part) for part in parts)
            lines = [f"cell {index}: {line.strip()}" for line in text.splitlines() if BUSY_VERDICT in line or BUSY in line]
            flat = " ".join(text.split())  # a verdict wrapped across lines
            if not lines and (" ".join(BUSY_VERDICT.split()) in flat or " ".join(BUSY.split()) in flat):
                lines = [f"cell {index}: (wrapped) {flat[:160]}"]
            found += lines
    return found


def execute(path: Path, timeout: int = 600, busy_fraction_start: float | None = None) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    with LoadMonitor() as monitor:
        client.execute()
    elapsed = time.perf_counter() - start
    if not monitor.quiet:
        raise MachineBusy(f"other processes used {monitor.others_fraction:.0%} of the CPUs during the run "
                          f"(limit {MAX_OTHERS_BUSY_FRACTION:.0%}; load average {monitor.load_end:.2f})")
    busy_cells = busy_output_lines(nb)
    if busy_cells:
        raise MachineBusy(f"a cell printed that the machine was busy: {busy_cells[0]}")
    nb.metadata.pop("widgets", None)  # widget state holds random model ids
    nb.metadata.setdefault("deploykit", {})["executed"] = monitor.stamp(busy_fraction_start)
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--retries", type=int, default=2, help="re-runs of a notebook executed on a busy machine")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if path.resolve().is_relative_to(ROOT / "labs"):
            print(f"skip {path}: labs are generated (tools/make_labs.py) and committed without outputs")
            continue
        for attempt in range(args.retries + 1):
            try:
                with quiet_machine() as busy_start:
                    print(f"{path}: {execute(path, args.timeout, busy_start):.1f} s", flush=True)
                break
            except CellExecutionError as error:
                print(f"{path}: FAILED, not written\n{error}", file=sys.stderr)
                return 1
            except MachineBusy as busy:
                again = attempt < args.retries
                print(f"{path}: machine busy, not written: {busy}" + ("; running it again" if again else ""),
                      file=sys.stderr, flush=True)
                if not again:
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
