"""Fair latency measurement: warm-up, repeats, median and tail, threads recorded."""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass(frozen=True)
class BenchResult:
    """Latencies of one configuration, in milliseconds per call."""

    label: str
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    warmup: int
    repeats: int
    threads: int | None
    batch: int | None
    first_call_ms: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        stated = [f"batch {self.batch}"] if self.batch is not None else []  # what the caller did not state is left out
        stated += [f"{self.threads} thread(s)"] if self.threads is not None else []
        stated.append(f"{self.repeats} runs after {self.warmup} warm-up")
        return f"{self.label}: median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms ({', '.join(stated)})"


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100) of ``samples``."""
    if not samples:
        raise ValueError("percentile expected at least one sample")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile expected q between 0 and 100, got {q}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def benchmark(
    fn: Callable[[], object],
    *,
    label: str = "",
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    batch: int | None = None,
    min_seconds: float = 0.0,
) -> BenchResult:
    """Time ``fn()`` after ``warmup`` untimed calls; ``repeats`` timed calls (more if
    ``min_seconds`` is not yet reached). ``threads`` and ``batch`` are recorded, not set: set the
    runtime's threads yourself (``torch.set_num_threads``, ORT ``intra_op_num_threads``) so the
    setting stays visible where it matters.
    """
    if not callable(fn):
        raise TypeError(f"benchmark expected a callable taking no arguments, got {type(fn).__name__}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup expected an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats expected an int >= 1, got {repeats!r}")
    start = time.perf_counter()
    fn()
    first_call_ms = (time.perf_counter() - start) * 1e3
    for _ in range(max(warmup - 1, 0)):
        fn()
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return BenchResult(
        label=label,
        median_ms=statistics.median(samples),
        p90_ms=percentile(samples, 90),
        mean_ms=statistics.fmean(samples),
        min_ms=min(samples),
        warmup=warmup,
        repeats=len(samples),
        threads=threads,
        batch=batch,
        first_call_ms=first_call_ms,
    )


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_ISA_FLAGS = ("avx512_vnni", "avx_vnni", "avx512f", "avx2", "fma", "sse4_2", "asimddp", "asimd", "sve", "i8mm")


def cpu_features() -> list[str]:
    """The instruction-set features that decide which kernels run here (x86: AVX2, AVX-512, VNNI;
    ARM: NEON ``asimd``, dot-product ``asimddp``, ``i8mm``), read from /proc/cpuinfo on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return [flag for flag in _ISA_FLAGS if flag in flags]
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """What a benchmark ran on: CPU, cores, Python, default thread counts, library versions."""
    info = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpu_features": " ".join(cpu_features()) or "unknown",
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_kernels"] = torch.backends.cpu.get_cpu_capability()  # the ISA PyTorch dispatches to
    except ImportError:
        pass
    from importlib import metadata

    for dist in ("onnxruntime", "litert-torch", "ai-edge-litert"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info


def print_machine_info() -> None:
    for key, value in machine_info().items():
        print(f"{key:>14}: {value}")
