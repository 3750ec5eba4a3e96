#!/usr/bin/env python
"""Execute notebooks in place (outputs saved), the way strict ``pytest --nbval`` will run them.

Authors run this after editing a lecture or a solution, then commit the notebook with its outputs:

    .venv/bin/python tools/execute_notebooks.py notebooks/04_onnx_export.ipynb solutions/lab03_*.ipynb

Each kernel starts in the notebook's own folder, like nbval's. Execution stops at the first error
and the notebook is not written, so a half-run notebook is never saved.
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
from quiet_machine import quiet_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def execute(path: Path, timeout: int = 600) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nb.metadata.pop("widgets", None)  # widget state holds random model ids
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if path.resolve().is_relative_to(ROOT / "labs"):
            print(f"skip {path}: labs are generated (tools/make_labs.py) and committed without outputs")
            continue
        try:
            with quiet_machine():
                print(f"{path}: {execute(path, args.timeout):.1f} s", flush=True)
        except CellExecutionError as error:
            print(f"{path}: FAILED, not written\n{error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
