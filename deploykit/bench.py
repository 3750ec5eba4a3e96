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


#: Environment variable: how many times slower than a real CPU this one runs (an emulated CPU).
TIME_SCALE_VARIABLE = "DEPLOYKIT_TIME_SCALE"


def time_scale() -> float:
    """How much slower than real hardware this CPU is declared to be (1.0 unless set).

    ``make test-portable`` runs notebooks on a CPU emulated by qemu-user, tens of times slower than
    the real one. It sets ``DEPLOYKIT_TIME_SCALE`` so that latency *budgets* (a lab's frame budget)
    and the amount of repeated work a notebook does scale with it, while what the run checks (the
    numerics) stays the same. On real hardware nothing changes.
    """
    raw = os.environ.get(TIME_SCALE_VARIABLE, "1")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIME_SCALE_VARIABLE} expected a number >= 1, got {raw!r}") from None
    if not value >= 1:
        raise ValueError(f"{TIME_SCALE_VARIABLE} expected a number >= 1, got {raw!r}")
    return value


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


#: At most this share of all CPUs kept busy by OTHER processes while something is timed. A quiet 2-core
#: machine measures 0.002-0.02 (kernel threads, daemons). At 0.23 (a browser test running beside lecture
#: 07) ResNet-18's int8 median moved from 24 to 38 ms with a p90 of 53 ms; lab 04 was once published at
#: load 2.1 with 2 threads 100x slower than 1. Above it a timing is not a result
#: (``tools/quiet_machine.py`` and ``tests/test_executed_quiet.py`` hold notebooks to it).
QUIET_OTHERS_FRACTION = 0.15
#: What :func:`print_machine_info` prints when others use more than that: a committed output carrying it
#: is a defect (tests/test_executed_quiet.py scans every committed notebook for it and for :data:`BUSY`).
BUSY_VERDICT = "BUSY: timings taken now are not results"


def cpu_seconds() -> tuple[float, float] | None:
    """(busy, all) CPU seconds the whole machine has spent since boot, from /proc/stat (None off Linux).

    Busy is everything but idle and iowait; guest time is already inside user time, so only the first
    eight fields add up to the total."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields)
    return (total - fields[3] - fields[4]) / tick, total / tick


def others_busy_fraction(before: tuple[float, float], after: tuple[float, float], own_seconds: float) -> float:
    """Share of all CPUs busy between two :func:`cpu_seconds` readings in processes other than the
    ones that spent ``own_seconds`` of CPU time meanwhile (this process and its children)."""
    total = after[1] - before[1]
    return min(max((after[0] - before[0] - own_seconds) / total, 0.0), 1.0) if total > 0 else 0.0


def machine_load(seconds: float = 0.25) -> dict:
    """How busy the machine is now: the 1/5/15-minute load averages and the share of all CPUs that
    OTHER processes kept busy over ``seconds`` (from /proc/stat on Linux, this process's own CPU time
    subtracted). A timing taken while others are busy is not a result (see :func:`contention`)."""
    try:
        load = tuple(round(v, 2) for v in os.getloadavg())
    except (OSError, AttributeError):
        load = None

    def own() -> float:
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system

    others = None
    before, own_before = cpu_seconds(), own()
    if before is not None:
        time.sleep(seconds)
        others = others_busy_fraction(before, cpu_seconds(), own() - own_before)
    return {"load_average": load, "others_busy_fraction": others}


def print_machine_info() -> None:
    """Print :func:`machine_info` and the load the machine is under now (:func:`machine_load`)."""
    for key, value in machine_info().items():
        print(f"{key:>14}: {value}")
    load = machine_load()
    if load["load_average"] is not None:
        print(f"{'load average':>14}: {' '.join(f'{v:.2f}' for v in load['load_average'])} (1, 5, 15 min; "
              f"{os.cpu_count()} logical cores)")
    if load["others_busy_fraction"] is not None:
        busy = load["others_busy_fraction"]
        verdict = "quiet" if busy <= QUIET_OTHERS_FRACTION else BUSY_VERDICT
        print(f"{'others busy':>14}: {busy:.0%} of the CPUs now ({verdict})")


# --- Repeated rounds, order alternated (lecture 06) ----------------------------------------------

P90_MIN_SAMPLES = 20  # below this many samples a "p90" is (almost) the maximum: print the maximum

# Lecture 06's speed table, (model, batch) -> (warm-up calls, timed calls) per round, for 3 rounds.
# One source for the notebook and tools/bench_ort_vs_torch.py. Sized so that 06 runs in under a
# minute on 2 cores, even in a fresh clone that must export ResNet-18 first: ResNet-18 gets fewer
# than P90_MIN_SAMPLES samples, so its tail is printed as the maximum; the digits CNN gets a p90.
SPEED_PLAN = {
    ("resnet18", 1): (1, 5),
    ("resnet18", 2): (1, 1),
    ("digits", 1): (20, 100),
    ("digits", 256): (3, 10),
}
SPEED_ROUNDS = 3


@dataclass(frozen=True)
class RoundsResult:
    """Latencies of one configuration measured in several rounds (ms per call, one tuple per round)."""

    label: str
    rounds: tuple[tuple[float, ...], ...]
    warmup: int
    threads: int | None
    batch: int | None

    @property
    def samples(self) -> list[float]:
        return [s for samples in self.rounds for s in samples]

    @property
    def median_ms(self) -> float:
        """Median of all samples, pooled over the rounds."""
        return statistics.median(self.samples)

    @property
    def round_medians(self) -> list[float]:
        return [statistics.median(samples) for samples in self.rounds]

    @property
    def spread_ms(self) -> tuple[float, float]:
        """(lowest, highest) round median: how far one round's answer can move."""
        medians = self.round_medians
        return min(medians), max(medians)

    @property
    def min_ms(self) -> float:
        return min(self.samples)

    @property
    def max_ms(self) -> float:
        return max(self.samples)

    @property
    def tail(self) -> tuple[str, float]:
        """("p90", value) with at least ``P90_MIN_SAMPLES`` samples, else ("max", value)."""
        samples = self.samples
        if len(samples) >= P90_MIN_SAMPLES:
            return "p90", percentile(samples, 90)
        return "max", max(samples)

    def __str__(self) -> str:
        lo, hi = self.spread_ms
        name, value = self.tail
        stated = [f"batch {self.batch}"] if self.batch is not None else []
        stated += [f"{self.threads} thread(s)"] if self.threads is not None else []
        stated.append(f"{len(self.rounds)} rounds x {len(self.rounds[0])} runs after {self.warmup} warm-up")
        return (f"{self.label}: median {self.median_ms:.3f} ms (round medians {lo:.3f}-{hi:.3f}), "
                f"{name} {value:.3f} ms ({', '.join(stated)})")


def benchmark_rounds(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int = 3,
    warmup: int = 5,
    repeats: int = 10,
    threads: int | None = None,
    batch: int | None = None,
) -> dict[str, RoundsResult]:
    """Time each callable of ``fns`` in ``rounds`` rounds, in blocks: per round and callable,
    ``warmup`` untimed calls then ``repeats`` timed calls. The order alternates between rounds
    (A B, B A, A B ...), so neither contestant always runs first (or always right after the other,
    whose idle threads may still be spinning: the warm-up absorbs that). ``threads`` and ``batch``
    are recorded, not set.
    """
    if not fns or not all(callable(fn) for fn in fns.values()):
        raise TypeError("benchmark_rounds expected a non-empty dict of callables taking no arguments")
    for name, value, low in (("rounds", rounds, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} expected an int >= {low}, got {value!r}")
    labels = list(fns)
    samples: dict[str, list[tuple[float, ...]]] = {label: [] for label in labels}
    for r in range(rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            fn = fns[label]
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            samples[label].append(tuple(times))
    return {label: RoundsResult(label, tuple(samples[label]), warmup, threads, batch) for label in labels}


def speedup_spread(slow: RoundsResult, fast: RoundsResult) -> tuple[float, float, float]:
    """Speed-up of ``fast`` over ``slow`` per round (round median of ``slow`` / round median of
    ``fast``, both measured back to back): (median, lowest, highest) over the rounds."""
    if len(slow.rounds) != len(fast.rounds):
        raise ValueError("speedup_spread expected two results with the same number of rounds")
    per_round = [s / f for s, f in zip(slow.round_medians, fast.round_medians)]
    return statistics.median(per_round), min(per_round), max(per_round)


# --- Contended results: the machine was busy (issue 22) -----------------------------------------

#: More threads on the same work may be somewhat slower (thread start-up and synchronisation on a model
#: too small to split), but not this much: beyond it the threads waited for cores something else held.
#: (The symptom it catches: lab 04 once published PyTorch at 0.471 ms on 1 thread, 55.994 ms on 2.)
CONTENTION_SLOWDOWN = 2.0
#: A tail (p90, or the maximum of few samples) this many times the median: runs were interrupted.
SPREAD_LIMIT = 3.0
#: Round medians of one configuration this far apart (highest / lowest): the machine changed under us.
ROUND_SPREAD_LIMIT = 1.5
#: ... and by at least this much in absolute terms. Another process takes a core for a scheduler time
#: slice (milliseconds); a call of a few microseconds has tails and thread wake-ups of tens of
#: microseconds on a quiet machine (a 10 us LiteRT call with a 35 us p90), which are not load.
CONTENTION_MIN_MS = 0.25

BUSY = "machine busy: re-run"


def _median_and_tail(result) -> tuple[float, float | None]:
    if isinstance(result, (int, float)):
        return float(result), None
    if isinstance(result, RoundsResult):
        return result.median_ms, result.tail[1]
    if isinstance(result, dict):
        return float(result["median_ms"]), (float(result["p90_ms"]) if "p90_ms" in result else None)
    return float(result.median_ms), float(result.p90_ms)


def contention(one_thread, more_threads=None, *, threads: int | None = None,
               slowdown_limit: float = CONTENTION_SLOWDOWN, spread_limit: float = SPREAD_LIMIT,
               round_spread_limit: float = ROUND_SPREAD_LIMIT, min_ms: float = CONTENTION_MIN_MS) -> str | None:
    """Why a measurement looks contended (the machine was busy), or None when it looks clean.

    ``one_thread`` and ``more_threads``: the same work (model, batch, runtime) at 1 thread and at
    more threads, each a median in ms, a :class:`BenchResult`, a :class:`RoundsResult` or a dict with
    ``median_ms`` (and ``p90_ms``). Flags more threads ``slowdown_limit`` times slower than one, a
    tail ``spread_limit`` times the median, or round medians ``round_spread_limit`` apart, each only
    when the difference is also at least ``min_ms`` (a scheduler time slice, not microsecond jitter). Print
    :data:`BUSY` instead of a ratio built on a flagged result (see :func:`speedup_text`).
    """
    one_median, one_tail = _median_and_tail(one_thread)
    if more_threads is not None:
        more_median, more_tail = _median_and_tail(more_threads)
        if more_median > slowdown_limit * one_median and more_median - one_median >= min_ms:
            many = f"{threads} threads" if threads else "more threads"
            return (f"{many} took {more_median:.3f} ms, {more_median / one_median:.1f}x the 1-thread "
                    f"{one_median:.3f} ms on the same work: the threads waited for busy cores")
    for result in (one_thread, more_threads):
        if result is None:
            continue
        median, tail = _median_and_tail(result)
        if tail is not None and median > 0 and tail > spread_limit * median and tail - median >= min_ms:
            return f"tail {tail:.3f} ms is {tail / median:.1f}x the median {median:.3f} ms: runs were interrupted"
        if isinstance(result, RoundsResult) and len(result.rounds) > 1:
            low, high = result.spread_ms
            if low > 0 and high > round_spread_limit * low and high - low >= min_ms:
                return f"round medians {low:.3f}-{high:.3f} ms differ by {high / low:.1f}x: the machine's load changed"
    return None


def speedup_text(slow, fast, *, also=(), digits: int = 2) -> str:
    """``"1.35x"`` (median of ``slow`` / median of ``fast``), or :data:`BUSY` when ``slow``, ``fast``
    or a ``(one_thread, more_threads)`` pair in ``also`` is contended (:func:`contention`)."""
    if contention(slow) or contention(fast) or any(contention(*pair) for pair in also):
        return BUSY
    return f"{_median_and_tail(slow)[0] / _median_and_tail(fast)[0]:.{digits}f}x"


# --- Roofline: memory bandwidth, arithmetic intensity (lecture 06) -------------------------------


def l3_cache_bytes(default: int = 32 * 2**20) -> int:
    """Size of the largest CPU cache (L3, else L2) from Linux sysfs; ``default`` elsewhere."""
    from pathlib import Path

    sizes = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            sizes[level] = max(sizes.get(level, 0), int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return sizes[max(sizes)] if sizes else default


#: All arrays of one bandwidth test together stay within this (a notebook's budget is 2 GB).
STREAM_MAX_BYTES = 2**30


def stream_arrays(kernel: str) -> int:
    """How many arrays a STREAM kernel touches: ``copy`` 2 (a[:] = b), ``triad`` 3 (a = b + 3 c)."""
    if kernel not in ("copy", "triad"):
        raise ValueError(f"stream_bandwidth expected kernel 'copy' or 'triad', got {kernel!r}")
    return 2 if kernel == "copy" else 3


def stream_array_bytes(kernel: str = "triad") -> int:
    """The default array size of :func:`stream_bandwidth`: 4x the largest cache, so that the data comes
    from memory, but all the kernel's arrays together at most :data:`STREAM_MAX_BYTES`. On a CPU whose
    cache is larger than a quarter of that, the arrays are less than 4x the cache:
    :func:`stream_working_set_ratio` says by how much the test exceeds the cache."""
    return min(4 * l3_cache_bytes(), STREAM_MAX_BYTES // stream_arrays(kernel)) // 64 * 64


def stream_working_set_ratio(kernel: str = "triad", array_bytes: int | None = None) -> float:
    """All arrays of one test over the largest cache: above about 2 the figure is memory's, near 1 or
    below it is (partly) the cache's, an upper bound on memory bandwidth."""
    size = array_bytes or stream_array_bytes(kernel)
    return stream_arrays(kernel) * size / l3_cache_bytes()


def stream_bandwidth(kernel: str = "triad", *, array_bytes: int | None = None, repeats: int = 7,
                     lib: str = "torch") -> float:
    """STREAM-like memory bandwidth in GB/s (10^9 bytes/s): the median of ``repeats`` timed passes
    over arrays of ``array_bytes`` each (default :func:`stream_array_bytes`: 4x the largest cache
    within 1 GiB for all arrays, so the data comes from memory; :func:`stream_working_set_ratio`
    says how far beyond the cache a test went). ``copy``: a[:] = b, 2 arrays moved; ``triad``: a = b + 3 c, 3 arrays moved (write
    allocation not counted, as in STREAM). ``lib="torch"`` uses ``torch.set_num_threads`` threads
    (set it yourself); ``lib="numpy"`` runs on one thread and has only ``copy`` (NumPy has no
    one-pass triad).
    """
    if kernel not in ("copy", "triad"):
        raise ValueError(f"stream_bandwidth expected kernel 'copy' or 'triad', got {kernel!r}")
    if lib not in ("torch", "numpy"):
        raise ValueError(f"stream_bandwidth expected lib 'torch' or 'numpy', got {lib!r}")
    if lib == "numpy" and kernel != "copy":
        raise ValueError("stream_bandwidth with lib='numpy' measures 'copy' only (NumPy has no one-pass triad)")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats expected an int >= 1, got {repeats!r}")
    import numpy as np

    n = (array_bytes or stream_array_bytes(kernel)) // 4
    a, b = np.zeros(n, np.float32), np.ones(n, np.float32)
    if lib == "numpy":
        fn = lambda: np.copyto(a, b)  # noqa: E731
    else:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        if kernel == "copy":
            fn = lambda: ta.copy_(tb)  # noqa: E731
        else:
            tc = torch.full((n,), 2.0)  # the third array only where the kernel reads it
            fn = lambda: torch.add(tb, tc, alpha=3.0, out=ta)  # noqa: E731
    moved = stream_arrays(kernel) * n * 4
    fn()  # touch every page once
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return moved / statistics.median(times) / 1e9


#: Operators that read a constant table one row per token: (op type, its inputs read that way, its axis attribute).
ROW_READERS = {"Gather": ((0,), "axis"), "GatherBlockQuantized": ((0, 2, 3), "gather_axis")}


def _stored_bytes(tensor) -> int:
    """Bytes an initializer occupies (packed 4-bit types as stored, not as unpacked by NumPy)."""
    from onnx import numpy_helper

    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return numpy_helper.to_array(tensor).nbytes


def weight_bytes_read(path) -> tuple[int, int]:
    """``(bytes of weights one call of the ONNX graph at path reads per token, bytes of weights it stores)``.

    Every initializer is read whole, except a table that is only looked up along its first axis
    (``Gather``, or ``GatherBlockQuantized``'s quantised data, scales and zero points: an embedding that is
    not shared with an output layer): one row per token. A tied embedding, which the output layer reads too,
    is read whole. Lectures 13-14's decode ceilings and lab 10's check count bytes this way. Initializers
    stored as external data are counted from their files (``onnx.load`` reads them).
    """
    import onnx

    model = onnx.load(str(path))
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        rows, axis_name = ROW_READERS.get(node.op_type, ((), "axis"))
        axis = next((a.i for a in node.attribute if a.name == axis_name), 0)
        for position, name in enumerate(node.input):
            consumers.setdefault(name, []).append(position in rows and axis == 0)
    read = stored = 0
    for tensor in model.graph.initializer:
        nbytes = _stored_bytes(tensor)
        stored += nbytes
        uses = consumers.get(tensor.name, [])
        by_row = len(tensor.dims) >= 2 and tensor.dims[0] > 0 and bool(uses) and all(uses)
        read += nbytes // tensor.dims[0] if by_row else nbytes
    return read, stored


@dataclass(frozen=True)
class TrafficReport:
    """Bytes one inference moves, counted from the graph, and its arithmetic intensity."""

    flops: int
    weight_bytes: int        # every initializer, once per node that reads it
    activation_bytes: int    # every non-weight input read and every output written, node by node
    minimum_bytes: int       # weights once + graph inputs + graph outputs (perfect caching)

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved, with no reuse between operators (each tensor read and written)."""
        return self.flops / self.bytes

    @property
    def max_intensity(self) -> float:
        """FLOPs per byte if only weights, inputs and outputs had to come from memory."""
        return self.flops / self.minimum_bytes


def memory_traffic(model, *, batch: int = 1) -> TrafficReport:
    """Arithmetic intensity of one inference of ``model`` (``.onnx`` path or ``ModelProto``): its
    FLOPs (``count_flops``, Conv/Gemm/MatMul) over the bytes of weights and activations its nodes
    read and write. A node-by-node model (no tensor stays in cache between operators), so a lower
    bound on intensity; ``max_intensity`` is the upper bound.
    """
    from math import prod

    from onnx import helper, numpy_helper, shape_inference

    from .flops import _fix_input_shapes, _load, count_flops

    proto = _load(model)
    _fix_input_shapes(proto, batch, None)
    inferred = shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    size: dict[str, int] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = value.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            itemsize = helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
            size[value.name] = prod(d.dim_value for d in t.shape.dim) * itemsize
    weights = {}
    for init in proto.graph.initializer:
        weights[init.name] = prod(init.dims) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    weights[node.output[0]] = numpy_helper.to_array(attr.t).nbytes
    weight_bytes = activation_bytes = 0
    for node in proto.graph.node:
        if node.op_type == "Constant":
            continue
        for name in node.input:
            if name in weights:
                weight_bytes += weights[name]
            elif name:
                activation_bytes += size.get(name, 0)
        activation_bytes += sum(size.get(name, 0) for name in node.output)
    io = sum(size.get(v.name, 0) for v in [*proto.graph.input, *proto.graph.output] if v.name not in weights)
    flops = count_flops(model, batch=batch).total
    return TrafficReport(flops, weight_bytes, activation_bytes, sum(weights.values()) + io)


def roofline(peak_gflops: float, bandwidth_gbs: float, intensity: float) -> float:
    """The roofline ceiling in GFLOP/s: min(peak compute, bandwidth x arithmetic intensity)."""
    return min(peak_gflops, bandwidth_gbs * intensity)
