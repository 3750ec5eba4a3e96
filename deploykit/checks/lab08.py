"""Checks for lab 08: the fastest configuration for a new model, measured fairly, then profiled.

``results`` maps a configuration name to a ``dk.benchmark`` result (one image per call). The checks
test the protocol (warm-up, repeats, threads and batch recorded), the breadth of the search, the
choice against the learner's own numbers, and the profile against the learner's own trace. A
recorded protocol can still hide an unfair timed function, so ``check_results`` also times the lab's
model itself, the fair way, and rejects medians implausibly far from that.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..paths import artifact_path
from . import check, require, require_fair_benchmark

MIN_CONFIGS = 4
MIN_WARMUP, MIN_REPEATS = 3, 20
SHARE_TOLERANCE = 0.02
#: A configuration may be this much slower than ONNX Runtime float32 (all optimisations) at the same
#: threads. Measured on a 2-core AMD EPYC: the slowest honest one, float16 with optimisations off, is
#: 4.4x; a session built inside the timed function is 14x (1 thread) to 20x (2 threads).
SLOWER_LIMIT = 8.0
#: ... and at most this much faster (another runtime, int8 on a VNNI or dot-product CPU): more means the
#: timed function does not run the model.
FASTER_LIMIT = 5.0
MODEL_FILE = "lab08/mobilenet_v3_small.onnx"


@check("configurations measured fairly")
def check_results(results: dict) -> None:
    """At least four configurations, several thread counts and two kinds of runtime or precision,
    each a fair ``dk.benchmark`` result at batch 1 with its threads recorded."""
    require(isinstance(results, dict) and results, "results should be a dict: configuration name -> dk.benchmark result")
    require(len(results) >= MIN_CONFIGS, f"you measured {len(results)} configuration(s): try at least {MIN_CONFIGS} "
            "(runtime, optimisation level, threads, precision)")
    for name, result in results.items():
        require_fair_benchmark(f"results[{name!r}]", result, threads=result.threads if isinstance(
            getattr(result, "threads", None), int) else 1, batch=1, min_warmup=MIN_WARMUP, min_repeats=MIN_REPEATS)
    threads = {result.threads for result in results.values()}
    require(len(threads) >= 2, f"every configuration ran at {min(threads)} thread(s): the thread count is part of "
            "the configuration; measure 1 thread and all cores")
    names = " ".join(results).lower()
    require(any(word in names for word in ("fp16", "int8", "openvino")),
            "every configuration is ONNX Runtime float32: include another precision (fp16, int8) or runtime (OpenVINO)")
    fair = {t: _fair_reference_ms(t) for t in sorted(threads)}
    for name, result in results.items():
        reference = fair[result.threads]
        ratio = result.median_ms / reference
        require(ratio < SLOWER_LIMIT,
                f"results[{name!r}]: median {result.median_ms:.3f} ms, {ratio:.0f}x what ONNX Runtime float32 takes here "
                f"at {result.threads} thread(s) when timed fairly ({reference:.3f} ms, measured by this check): is a session "
                "or compiled model built, or the input converted, inside the timed function? Build it once, outside, "
                "and time only session.run / request.infer")
        require(ratio > 1 / FASTER_LIMIT,
                f"results[{name!r}]: median {result.median_ms:.4f} ms, far below one inference of this model here "
                f"({reference:.3f} ms with ONNX Runtime at {result.threads} thread(s), measured by this check): does "
                "your timed function run the model on one frame (call session.run / request.infer)?")


def lab_model_onnx() -> Path:
    """The lab's model file, ``artifacts/lab08/mobilenet_v3_small.onnx``: what the lab's first cells export,
    exported the same way (seeded weights, one 128x128 frame) if they have not run."""
    path = artifact_path(MODEL_FILE)
    if path.exists():
        return path
    import torch

    from ..exports import export_onnx
    from ..models import torchvision_model

    frame = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    return export_onnx(torchvision_model("mobilenet_v3_small"), frame, MODEL_FILE)


def _fair_reference_ms(threads: int) -> float:
    """Median ms of the lab's model in ONNX Runtime float32, all optimisations, at ``threads``, one
    128x128 frame per call: session built once, warm-up, 30 runs."""
    import numpy as np

    from ..bench import benchmark
    from ..quantize import session as ort_session

    session = ort_session(lab_model_onnx(), threads=threads)
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 128, 128), dtype=np.float32)}
    return benchmark(lambda: session.run(None, feed), warmup=5, repeats=30, threads=threads).median_ms


@check("the fastest configuration, by your own measurements")
def check_fastest(results: dict, fastest: str) -> None:
    require(isinstance(results, dict) and fastest in results, f"fastest should be one of the names in results, got {fastest!r}")
    best = min(results, key=lambda name: results[name].median_ms)
    require(fastest == best, f"{fastest!r} has a median of {results[fastest].median_ms:.3f} ms, but {best!r} measured "
            f"{results[best].median_ms:.3f} ms: pick the lowest median (the p90 tells you about the tail)")


@check("the profile: slowest operator type and its share, warm-up skipped")
def check_profile(trace_path, skip_runs: int, slowest_op: str, share: float) -> None:
    """``trace_path``: what ``end_profiling()`` returned; the learner's ``slowest_op`` and ``share`` (0-1) must
    be what the trace says once ``skip_runs`` warm-up runs are left out."""
    from ..profiling import ort_profile

    require(isinstance(trace_path, (str, Path)) and Path(trace_path).is_file(),
            "trace_path should be the file session.end_profiling() returned")
    require(isinstance(skip_runs, int) and skip_runs >= 1, f"skip_runs is {skip_runs!r}: the first run of a session "
            "allocates memory and warms caches; profile warm-up runs too and skip at least one when you read the trace")
    try:
        profile = ort_profile(trace_path, skip_runs=skip_runs)
    except ValueError as error:
        require(False, str(error))
    require(profile.runs >= 5, f"only {profile.runs} run(s) after the warm-up: profile at least 5 for a stable table")
    top = profile.operators[0]
    require(isinstance(slowest_op, str) and slowest_op == top.op_type,
            f"slowest_op is {slowest_op!r}, but the trace's largest operator type is {top.op_type!r}: sum the node "
            "times by op type (args.op_name), not by node")
    require(isinstance(share, (int, float)) and 0 <= share <= 1, f"share should be a fraction between 0 and 1, got {share!r}")
    require(math.isclose(share, top.share, abs_tol=SHARE_TOLERANCE),
            f"share is {share:.3f}, the trace says {top.share:.3f} of the time inside operators: divide that type's "
            "total by the total of all node times (after the warm-up runs)")


__all__ = ["MIN_CONFIGS", "check_fastest", "check_profile", "check_results", "lab_model_onnx"]
