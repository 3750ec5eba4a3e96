#!/usr/bin/env python
"""PyTorch eager vs ONNX Runtime latency, outside a notebook: the cross-check of lecture 06.

Measures the same configurations as ``notebooks/06_ort_vs_pytorch_speed.ipynb`` (ResNet-18 at
batch 1 and 2, the course digits CNN at batch 1 and 256; 1 thread and all usable cores), with the
same protocol (``deploykit.bench.benchmark_rounds``: 3 rounds, each runtime timed in a block of
warm-up + repeats, the order alternated between rounds; the same threads for both runtimes,
PyTorch under ``torch.inference_mode``, ONNX Runtime with ``intra_op_num_threads`` = threads and
``inter_op_num_threads`` = 1), and prints each speed-up: the median over the rounds of
(PyTorch round median / ORT round median), with the lowest and highest round.

This is a separate measurement from the notebook's (and from lab 04's): expect the speed-ups to
differ by about the spread between rounds that both print. A much larger difference means
something other than the runtimes is being measured (a busy machine, a Jupyter kernel competing
for cores ...).

    .venv/bin/python tools/bench_ort_vs_torch.py            # the notebook's repeats
    .venv/bin/python tools/bench_ort_vs_torch.py --scale 3  # 3x the warm-ups and repeats
    .venv/bin/python tools/bench_ort_vs_torch.py --json     # machine-readable
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deploykit as dk  # noqa: E402  (first: quiets native logs)
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from deploykit.bench import SPEED_PLAN as PLAN  # noqa: E402  the notebook's plan: (model, batch) -> (warm-up, timed)
from deploykit.bench import SPEED_ROUNDS as ROUNDS  # noqa: E402
from deploykit.bench import BUSY, benchmark_rounds, contention, speedup_spread  # noqa: E402


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_counts() -> list[int]:
    return sorted({1, usable_cores()})


def make_input(name: str, batch: int) -> torch.Tensor:
    if name == "digits":
        return dk.digits_example_input(batch)
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def load(name: str) -> tuple[torch.nn.Module, Path]:
    if name == "digits":
        return dk.digits_model(), dk.digits_onnx()
    return dk.torchvision_model("resnet18"), dk.resnet18_onnx()


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(name: str, batch: int, threads: int, scale: float = 1.0) -> dict:
    warmup, repeats = (max(1, round(n * scale)) for n in PLAN[(name, batch)])
    model, path = load(name)
    x = make_input(name, batch)
    x_np = x.numpy()
    torch.set_num_threads(threads)

    def run_torch():
        with torch.inference_mode():
            return model(x)

    session = ort_session(path, threads)

    def run_ort():
        return session.run(None, {"input": x_np})

    result = benchmark_rounds({"pytorch": run_torch, "onnxruntime": run_ort}, rounds=ROUNDS, warmup=warmup,
                              repeats=repeats, threads=threads, batch=batch)
    pt, rt = result["pytorch"], result["onnxruntime"]
    speedup, low, high = speedup_spread(pt, rt)
    return {"model": name, "batch": batch, "threads": threads, "pytorch_ms": pt.median_ms,
            "pytorch_tail": pt.tail, "ort_ms": rt.median_ms, "ort_tail": rt.tail,
            "speedup": speedup, "speedup_low": low, "speedup_high": high,
            "rounds": ROUNDS, "warmup": warmup, "repeats": repeats,
            "contended": contention(pt) or contention(rt)}


def flag_contention(rows: list[dict]) -> list[dict]:
    """Mark rows whose work ran far slower on more threads than on one (the machine was busy)."""
    for row in rows:
        one = next((r for r in rows if (r["model"], r["batch"], r["threads"]) == (row["model"], row["batch"], 1)), None)
        if one is not None and row["threads"] > 1 and not row["contended"]:
            row["contended"] = (contention(one["pytorch_ms"], row["pytorch_ms"], threads=row["threads"])
                                or contention(one["ort_ms"], row["ort_ms"], threads=row["threads"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply warm-ups and repeats (default 1)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = flag_contention([measure(name, batch, threads, args.scale)
                            for threads in thread_counts() for (name, batch) in PLAN])
    if args.json:
        print(json.dumps({"machine": dk.machine_info(), "load_average": os.getloadavg(), "rows": rows}, indent=1))
        return 0
    print(f"CPU: {dk.cpu_model()}, usable cores {usable_cores()}, load average {os.getloadavg()[0]:.2f}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"{ROUNDS} rounds, order alternated; ms: median of all samples; speed-up: median of the rounds")
    print(f"{'model':>9} {'batch':>5} {'thr':>3} {'PyTorch ms':>11} {'ORT ms':>9} {'speed-up':>8} {'rounds':>13}")
    for r in rows:
        speed = (f"{r['speedup']:>7.2f}x {r['speedup_low']:>5.2f}-{r['speedup_high']:.2f}x" if not r["contended"]
                 else f"{BUSY} ({r['contended']})")
        print(f"{r['model']:>9} {r['batch']:>5} {r['threads']:>3} {r['pytorch_ms']:>11.3f} {r['ort_ms']:>9.3f} {speed}")
    clean = [r for r in rows if not r["contended"]]
    if len(clean) < len(rows):
        print(f"{len(rows) - len(clean)} row(s) measured on a busy machine: re-run when nothing else is running")
    if clean:
        geo = math.exp(float(np.mean([math.log(r["speedup"]) for r in clean])))
        print(f"geometric mean speed-up of ONNX Runtime over PyTorch ({len(clean)} clean rows): {geo:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
