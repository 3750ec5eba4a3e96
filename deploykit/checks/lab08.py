"""Checks for lab 08: the fastest configuration for a new model, measured fairly, then profiled.

``results`` maps a configuration name to a ``dk.benchmark`` result (one image per call). The checks
test the protocol (warm-up, repeats, threads and batch recorded), the breadth of the search, the
choice against the learner's own numbers, and the profile against the learner's own trace.
"""
from __future__ import annotations

import math
from pathlib import Path

from . import check, require, require_fair_benchmark

MIN_CONFIGS = 4
MIN_WARMUP, MIN_REPEATS = 3, 20
SHARE_TOLERANCE = 0.02


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
    require(len(threads) >= 2, f"every configuration ran at {threads.pop()} thread(s): the thread count is part of "
            "the configuration; measure 1 thread and all cores")
    names = " ".join(results).lower()
    require(any(word in names for word in ("fp16", "int8", "openvino")),
            "every configuration is ONNX Runtime float32: include another precision (fp16, int8) or runtime (OpenVINO)")


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


__all__ = ["MIN_CONFIGS", "check_fastest", "check_profile", "check_results"]
