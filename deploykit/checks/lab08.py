"""Checks for lab 08: the fastest configuration for a new model, measured fairly, then profiled.

``results`` maps a configuration name to a ``dk.benchmark`` result (one frame per call). The checks
test the protocol (warm-up, repeats, threads and batch recorded), the breadth of the search, a fair
comparison (every setting at every thread count), the choice (a p90 frame budget, then a re-match of
the two best in alternated rounds (blocks, order alternated): a tie when their round medians overlap), the profile against the
learner's own trace (float32 file, all optimisations, one thread), and the explanation (written from
the learner's variables).

A recorded protocol can still hide an unfair timed function, so ``check_results`` re-measures each
configuration it recognises from its name (runtime, precision, optimisation level) *as that
configuration*, the fair way, in alternated rounds (blocks, order alternated), and rejects a median outside that measurement's
spread widened by a factor (``SLOWER_LIMIT`` / ``FASTER_LIMIT``). A configuration it does not recognise
is compared with ONNX Runtime float32 at the same threads, with the wide ``UNKNOWN_*`` limits.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

from ..bench import BUSY, contention, time_scale
from ..paths import artifact_path
from ..profiling import KERNEL_SUFFIX, is_operator_event
from . import CheckFailed, check, ready, require, require_fair_benchmark, require_result

MIN_CONFIGS = 4
MIN_WARMUP, MIN_REPEATS = 3, 20
SHARE_TOLERANCE = 0.02
#: Limits against the check's own fair re-measurement of the *same* configuration (its round spread):
#: a session or compiled model built inside the timed function is 14-20x slower (measured on a 2-core
#: AMD EPYC and a 2-core Xeon), a machine busy with something else rarely 2x.
SLOWER_LIMIT = 4.0
FASTER_LIMIT = 3.0
#: Limits for a configuration the check cannot rebuild from its name (int8, another runtime): compared
#: with ONNX Runtime float32 (all optimisations) at the same threads. fp16 on a CPU without fp16
#: arithmetic is 4-9x slower than fp32, which is why recognised configurations get their own reference.
UNKNOWN_SLOWER_LIMIT, UNKNOWN_FASTER_LIMIT = 12.0, 5.0
#: The camera feature's tail budget: p90 of one frame within a quarter of a 30 fps frame.
FRAME_BUDGET_MS = 1000 / 30 / 4 * time_scale()
MIN_ROUNDS, MIN_ROUND_REPEATS = 3, 10
#: How many times the check measures its own reference while that measurement looks contended.
REFERENCE_ATTEMPTS = 3
MODEL_FILE = "lab08/mobilenet_v3_small.onnx"
FP16_FILE = "checks/lab08_mobilenet_v3_small.fp16.onnx"
_THREAD_WORDS = re.compile(r"[\s,;:_/()-]*\b(\d+)\s*(?:t|th|thr|threads?)\b[\s,;:_/()-]*", re.I)

#: Fingerprints of results that passed check_results in this kernel (check_fastest accepts only those).
_FAIR_RESULTS: set = set()
#: Why the check's own reference measurement looked contended (dk.bench.contention), by (recipe, threads).
_REFERENCE_BUSY: dict = {}


def setting_of(name: str) -> str:
    """A configuration's setting without its thread count: ``"ORT fp32 all, 2t"`` -> ``"ort fp32 all"``."""
    return " ".join(_THREAD_WORDS.sub(" ", name).lower().split())


def _recipe(name: str) -> tuple[str, str, str] | None:
    """(runtime, precision, ORT level) the check can rebuild from a configuration's name, or None."""
    lower = name.lower()
    if "int8" in lower or "qdq" in lower:
        return None
    precision = "fp16" if "fp16" in lower or "float16" in lower else "fp32"
    if "openvino" in lower or re.search(r"\bov\b", lower):
        return "openvino", precision, "all"
    if any(word in lower for word in ("disable", " off", "no opt", "none", "level 0")):
        level = "disable"
    elif "basic" in lower:
        level = "basic"
    elif "extended" in lower:
        level = "extended"
    else:
        level = "all"
    return "ort", precision, level


def _fingerprint(results: dict) -> tuple:
    return tuple(sorted((name, getattr(r, "median_ms", None), getattr(r, "p90_ms", None), getattr(r, "threads", None),
                         getattr(r, "repeats", None)) for name, r in results.items()))


def _fair_protocol(results: dict) -> None:
    """Everything about ``results`` that needs no timing: protocol, breadth, same settings at each thread count."""
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
    settings = {t: {setting_of(name) for name, r in results.items() if r.threads == t} for t in threads}
    every = set().union(*settings.values())
    for t in sorted(threads):
        absent = sorted(every - settings[t])
        if absent:
            raise CheckFailed(f"{absent[0]!r} is not measured at {t} thread(s), but other settings are: compare like "
                "with like, each setting at each thread count you use (name them '<setting>, <n>t', e.g. "
                "'ORT fp32 all, 1t' and 'ORT fp32 all, 2t'); otherwise a setting can win by its thread count alone")


@check("configurations measured fairly", timed=True)
def check_results(results: dict) -> None:
    """At least four configurations, every setting at two or more thread counts, another precision or
    runtime, each a fair ``dk.benchmark`` result at batch 1 that agrees with the check's own fair
    re-measurement of that configuration."""
    require_result(results, "results", "Exercise 1")
    _fair_protocol(results)
    references = {}
    for name, result in results.items():
        recipe = _recipe(name)
        key = (recipe or ("ort", "fp32", "all"), result.threads)
        if key not in references:
            references[key] = _fair_reference_ms(key[0], result.threads)
        low, high = references[key]
        reference_busy = _REFERENCE_BUSY.get(key)
        if reference_busy:  # a burst inflated the reference's slowest round: its fastest one is the fair figure
            high = low
        busy = reference_busy or contention(result)
        if busy and not (low / FASTER_LIMIT <= result.median_ms <= high * SLOWER_LIMIT):
            raise CheckFailed(f"{BUSY}: results[{name!r}] is far from the check's own measurement, but the machine "
                              f"looks busy ({busy}); close what else runs, then run Exercise 1 and this check again")
        slower, faster = (SLOWER_LIMIT, FASTER_LIMIT) if recipe else (UNKNOWN_SLOWER_LIMIT, UNKNOWN_FASTER_LIMIT)
        what = (f"{' '.join(key[0]).replace('ort', 'ONNX Runtime').replace('openvino', 'OpenVINO')} at "
                f"{result.threads} thread(s)")
        require(result.median_ms <= high * slower,
                f"results[{name!r}]: median {result.median_ms:.3f} ms, {result.median_ms / high:.0f}x what {what} takes "
                f"here when timed fairly (round medians {low:.3f}-{high:.3f} ms, measured by this check): is a session "
                "or compiled model built, or the input converted, inside the timed function? Build it once, outside, "
                "and time only session.run / request.infer. (If the machine was busy, run the cell again.)")
        require(result.median_ms >= low / faster,
                f"results[{name!r}]: median {result.median_ms:.4f} ms, far below one inference of this model with "
                f"{what} ({low:.3f}-{high:.3f} ms, measured by this check): does your timed function run the model on "
                "one frame (call session.run / request.infer)?")
    _FAIR_RESULTS.add(_fingerprint(results))


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


def lab_model_fp16() -> Path:
    """The check's own float16 copy of the lab's model (float32 inputs and outputs, as in the lab)."""
    import warnings

    import onnx
    from onnxconverter_common import float16

    source, path = lab_model_onnx(), artifact_path(FP16_FILE)
    if not path.exists() or path.stat().st_mtime < source.stat().st_mtime:
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            onnx.save(float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(path))
    return path


def fair_runner(recipe: tuple[str, str, str], threads: int):
    """A function running the lab's model once on one frame in ``recipe`` = (runtime, precision, ORT level),
    built the fair way: ONNX Runtime session built once; OpenVINO compiled once from a static 1x3x128x128
    shape, ``PERFORMANCE_HINT=LATENCY``, and ``infer`` sharing the input and output memory (no copies)."""
    import numpy as np

    runtime, precision, level = recipe
    frame = np.random.default_rng(0).standard_normal((1, 3, 128, 128), dtype=np.float32)
    if runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(lab_model_onnx()))
        model.reshape([1, 3, 128, 128])
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f16" if precision == "fp16" else "f32"})
        request = compiled.create_infer_request()
        return lambda: request.infer({0: frame}, share_inputs=True, share_outputs=True)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    path = lab_model_fp16() if precision == "fp16" else lab_model_onnx()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: frame}
    return lambda: session.run(None, feed)


def _fair_reference_ms(recipe: tuple[str, str, str], threads: int) -> tuple[float, float]:
    """(lowest, highest) round median, in ms, of ``recipe`` at ``threads`` timed fairly by the check:
    built once, 3 alternated rounds of 3 warm-up and 10 timed calls; measured again, up to
    ``REFERENCE_ATTEMPTS`` times in all, while the rounds look contended (a burst of load on the machine
    passes; a verdict built on it would not be the same twice). The quietest attempt (lowest highest round
    median) is the reference; if every attempt looked contended, :data:`_REFERENCE_BUSY` says why."""
    from ..bench import benchmark_rounds

    run = fair_runner(recipe, threads)
    attempts = []
    for _ in range(REFERENCE_ATTEMPTS):
        rounds = benchmark_rounds({"fair": run}, rounds=3, warmup=3, repeats=10, threads=threads, batch=1)["fair"]
        attempts.append(rounds)
        if not contention(rounds):
            break
    quietest = min(attempts, key=lambda attempt: attempt.spread_ms[1])
    _REFERENCE_BUSY[(recipe, threads)] = contention(quietest)
    return quietest.spread_ms


@check("the fastest configuration: within the p90 budget, confirmed in rounds", timed=True)
def check_fastest(results: dict, fastest, rounds: dict) -> None:
    """``fastest``: the winner of the two configurations with the lowest medians among those whose p90 is
    within ``FRAME_BUDGET_MS``, re-measured in ``rounds`` (``deploykit.bench.benchmark_rounds``: blocks, order alternated); when their
    round medians overlap it is a tie and ``fastest`` is the pair (a tuple of both names)."""
    from ..bench import P90_MIN_SAMPLES, RoundsResult

    require_result(results, "results", "Exercise 1")
    if _fingerprint(results) not in _FAIR_RESULTS:
        try:
            check_results.__wrapped__(results)
        except CheckFailed as failure:
            raise CheckFailed(f"your results do not pass check_results yet ({failure}); a winner chosen from unfair "
                              "or single-call numbers is no winner: fix Exercise 1 first") from None
    require_result(fastest, "fastest", "Exercise 2")
    require_result(rounds, "rounds", "Exercise 2")
    names = tuple(fastest) if isinstance(fastest, (tuple, list, set, frozenset)) else (fastest,)
    for name in names:
        require(isinstance(name, str) and name in results, f"fastest should name configurations of results, got {name!r}")
    within = sorted((name for name in results if results[name].p90_ms <= FRAME_BUDGET_MS),
                    key=lambda name: results[name].median_ms)
    require(within, f"no configuration has a p90 within the {FRAME_BUDGET_MS:.1f} ms budget on this machine: if it "
            "was busy, measure again")
    for name in names:
        require(name in within, f"{name!r} has a p90 of {results[name].p90_ms:.2f} ms, over the {FRAME_BUDGET_MS:.1f} ms "
                "frame budget: the tail decides whether frames are dropped, so a configuration that misses the budget "
                "cannot win, whatever its median")
    contenders = within[:2]
    require(isinstance(rounds, dict) and all(isinstance(r, RoundsResult) for r in rounds.values()),
            "rounds should be what deploykit.bench.benchmark_rounds returns: a dict name -> rounds result")
    for name in contenders:
        require(name in rounds, f"rounds has no {name!r}: re-time the two configurations with the lowest medians "
                "within the budget, together, with deploykit.bench.benchmark_rounds (your runs[...] functions)")
        result = rounds[name]
        require(len(result.rounds) >= MIN_ROUNDS and min(len(r) for r in result.rounds) >= MIN_ROUND_REPEATS,
                f"rounds[{name!r}] has {len(result.rounds)} round(s) of {min(len(r) for r in result.rounds)} run(s): "
                f"use at least {MIN_ROUNDS} rounds of {MIN_ROUND_REPEATS} runs, so the spread means something")
        ratio = result.median_ms / results[name].median_ms
        busy = contention(result) or contention(results[name])
        require(not busy or 1 / FASTER_LIMIT < ratio < SLOWER_LIMIT, f"{BUSY}: rounds[{name!r}] has a median {ratio:.1f}x "
                f"the one in results, but the machine looks busy ({busy}); close what else runs, then run Exercises 1 "
                "and 2 and this check again")
        require(1 / FASTER_LIMIT < ratio < SLOWER_LIMIT,
                f"rounds[{name!r}] has a median {ratio:.1f}x the one in results: time the same function, built once")
    if len(contenders) == 1:
        require(names == (contenders[0],), "only one configuration meets the budget here: that one is fastest")
        return
    a, b = contenders
    (a_low, a_high), (b_low, b_high) = rounds[a].spread_ms, rounds[b].spread_ms
    tie = a_low <= b_high and b_low <= a_high
    if tie:
        require(set(names) == {a, b}, f"the round medians of {a!r} ({a_low:.3f}-{a_high:.3f} ms) and {b!r} "
                f"({b_low:.3f}-{b_high:.3f} ms) overlap: within noise neither is faster. Call it a tie "
                "(fastest = both names, as a tuple) or run more rounds")
    else:
        require(len(names) == 1, f"the round medians of {a!r} and {b!r} do not overlap: one of them is faster, not a tie")
        require(names[0] in (a, b), f"{names[0]!r} is not one of the two lowest medians within the budget: sort the "
                "configurations within the budget by median and re-time the first two")
        winner = min((a, b), key=lambda name: rounds[name].median_ms)
        require(names[0] == winner, f"{names[0]!r} is slower than its rival in your rounds: the rounds (blocks, order "
                "alternated) decide, not the first table")
    for name in names:
        samples = rounds[name].samples
        if len(samples) >= P90_MIN_SAMPLES:
            _, tail = rounds[name].tail
            busy = contention(rounds[name])
            require(tail <= FRAME_BUDGET_MS or not busy, f"{BUSY}: {name!r} misses the {FRAME_BUDGET_MS:.1f} ms budget at "
                    f"the tail of your rounds (p90 {tail:.2f} ms), but the machine looks busy ({busy}); run Exercise 2 "
                    "and this check again on a quiet machine")
            require(tail <= FRAME_BUDGET_MS, f"{name!r} misses the {FRAME_BUDGET_MS:.1f} ms budget at the tail of your "
                    f"rounds (p90 {tail:.2f} ms): it cannot be the winner (if the machine was busy, measure again)")


@lru_cache(maxsize=1)
def _reference_nodes() -> frozenset:
    """Node names one run of the lab's float32 model executes in ONNX Runtime, all optimisations, one thread."""
    import json
    import tempfile

    import numpy as np
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "reference")
        session = ort.InferenceSession(str(lab_model_onnx()), options, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 128, 128), np.float32)})
        events = json.loads(Path(session.end_profiling()).read_text())
    return frozenset(e["name"][:-len(KERNEL_SUFFIX)] for e in events if is_operator_event(e))


def _profiled_setting(trace_path) -> None:
    """The trace must come from the float32 model, all optimisations, one thread (what Exercise 3 asks)."""
    import json

    try:
        events = json.loads(Path(trace_path).read_text())
    except (OSError, ValueError):
        raise CheckFailed("trace_path is not a readable ONNX Runtime trace: pass what end_profiling() returned") from None
    nodes = [e for e in events if is_operator_event(e)]
    require(nodes, "the trace has no operator events: run the session a few times before end_profiling()")
    types = {key for e in nodes for shape in e.get("args", {}).get("input_type_shape", []) or [] for key in shape}
    require("float16" not in types, "the trace shows float16 tensors: profile the float32 file (onnx_path), the one "
            "every configuration starts from; on this CPU fp16 runs through casts and would explain the wrong model")
    threaded = [e for e in nodes if isinstance(e.get("args", {}).get("thread_scheduling_stats"), dict)]
    require(not threaded, "the trace was recorded with more than one intra-op thread: profile on one thread "
            "(intra_op_num_threads=1), where each operator's time is its own work and not thread scheduling")
    mine = {e["name"][:-len(KERNEL_SUFFIX)] for e in nodes}
    require(mine == _reference_nodes(), "the trace's nodes are not those of the float32 model with all "
            "optimisations: set graph_optimization_level = ORT_ENABLE_ALL (fused nodes are the ones that run "
            "in the configurations you measured) and profile onnx_path")


@check("the profile: slowest operator type and its share, warm-up skipped")
def check_profile(trace_path, skip_runs: int, slowest_op: str, share: float) -> None:
    """``trace_path``: what ``end_profiling()`` returned for the float32 model with all optimisations on one
    thread; the learner's ``slowest_op`` and ``share`` (0-1) must be what the trace says once ``skip_runs``
    warm-up runs are left out."""
    from ..profiling import ort_profile

    require_result(trace_path, "trace_path", "Exercise 3")
    require(isinstance(trace_path, (str, Path)) and Path(trace_path).is_file(),
            "trace_path should be the file session.end_profiling() returned")
    require(isinstance(skip_runs, int) and skip_runs >= 1, f"skip_runs is {skip_runs!r}: the first run of a session "
            "allocates memory and warms caches; profile warm-up runs too and skip at least one when you read the trace")
    _profiled_setting(trace_path)
    try:
        profile = ort_profile(trace_path, skip_runs=skip_runs)
    except ValueError as error:
        require(False, str(error))
    require(profile.runs >= 5, f"only {profile.runs} run(s) after the warm-up: profile at least 5 for a stable table")
    top = profile.operators[0]
    require(isinstance(slowest_op, str) and slowest_op == top.op_type,
            f"slowest_op is {slowest_op!r}, but another operator type has more time in the trace: sum the node times "
            "by op type (args.op_name) over the runs after the warm-up, not by node, and not by how often it runs")
    require(isinstance(share, (int, float)) and 0 <= share <= 1, f"share should be a fraction between 0 and 1, got {share!r}")
    require(math.isclose(share, top.share, abs_tol=SHARE_TOLERANCE),
            f"share is {share:.3f}, not what the trace gives: divide that type's total by the total of all node "
            "times, both over the same runs (after the warm-up), not by the wall time of the runs")


def _numbers(value: float) -> set[str]:
    return {f"{value:.1f}", f"{value:.2f}", f"{value:.3f}"}


@check("the explanation, written from your variables")
def check_explanation(text, results: dict, fastest, slowest_op: str, share: float) -> None:
    """``text`` names the fastest configuration(s) with a median, the slowest operator type and its share:
    built with an f-string from the variables, it stays true when the notebook runs again."""
    require_result(text, "explanation", "Exercise 4")
    require(isinstance(text, str) and len(text.split()) >= 30, "explanation should be a few sentences of text "
            "(an f-string), not empty")
    names = tuple(fastest) if isinstance(fastest, (tuple, list, set, frozenset)) else (fastest,)
    for name in names:
        require(isinstance(name, str) and name in results, f"fastest should name configurations of results, got {name!r}")
        require(name in text, f"the explanation does not name {name!r}: write it with "
                "{fastest} (or the names in it), so a re-run that picks another configuration keeps it true")
        median = results[name].median_ms
        require(_numbers(median) & set(re.findall(r"\d+\.\d+", text)) or f"{median * 1000:.0f}" in text,
                f"the explanation gives no median for {name!r} from your results: use "
                "{results[name].median_ms:.2f} in the f-string rather than a number typed in")
    require(isinstance(slowest_op, str) and slowest_op in text, "the explanation does not name the slowest operator "
            "type: use {slowest_op}")
    shares = {f"{share:.0%}", f"{share:.1%}", f"{share:.2f}", f"{100 * share:.0f} %", f"{100 * share:.1f} %"}
    require(any(s in text for s in shares), "the explanation does not give the operator type's share from your "
            "profile: use {share:.0%} in the f-string")


__all__ = ["ready", "FRAME_BUDGET_MS", "MIN_CONFIGS", "check_explanation", "check_fastest", "check_profile", "check_results",
           "fair_runner", "lab_model_onnx", "setting_of"]
