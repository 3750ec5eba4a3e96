"""Read ONNX Runtime's profiling trace (``SessionOptions.enable_profiling``) into a per-operator table.

ONNX Runtime writes a Chrome-trace JSON file: one ``Session`` event per ``model_run`` (a whole
``session.run``) and one ``Node`` event per operator execution, named ``<node>_kernel_time``
(``args.op_name``, ``args.provider``: the provider that ran that node, i.e. its placement). Some builds
also write ``<node>_fence_before`` / ``_fence_after`` events with the same ``op_name``: only the
``_kernel_time`` events are operator time, so only they are counted.
Lecture 10 reads it with :func:`ort_profile`; the same file opens in ``chrome://tracing`` or
https://ui.perfetto.dev for a timeline.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OperatorRow:
    """Time of one operator type over the profiled runs."""

    op_type: str
    total_us: float
    calls: int
    share: float  # of the time spent inside operators


@dataclass(frozen=True)
class OrtProfile:
    """What a trace says about the runs after the skipped warm-up runs."""

    runs: int
    run_us: float        # total wall time of those runs (model_run events)
    node_us: float       # total time inside operators during them
    operators: tuple[OperatorRow, ...]           # by total time, largest first
    slowest_nodes: tuple[tuple[str, str, float], ...]  # (node name, op type, mean µs per run), largest first
    providers: tuple[str, ...]                   # execution providers that ran nodes

    @property
    def node_share(self) -> float:
        """Fraction of each run spent inside operators; the rest is the runtime's own per-call work."""
        return self.node_us / self.run_us if self.run_us else 0.0


def _events(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected the profiling file that session.end_profiling() returned, got {str(path)!r}")
    try:
        events = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path.name} is not a JSON trace ({error.msg}); pass the file end_profiling() wrote") from None
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise ValueError(f"{path.name} is not an ONNX Runtime trace: expected a JSON list of events")
    return events


KERNEL_SUFFIX = "_kernel_time"


def is_operator_event(event) -> bool:
    """True for a trace event that is one operator's execution (``<node>_kernel_time``), not a fence."""
    return isinstance(event, dict) and event.get("cat") == "Node" and str(event.get("name", "")).endswith(KERNEL_SUFFIX)


def ort_profile(path, *, skip_runs: int = 0, top: int = 5) -> OrtProfile:
    """Summarise an ONNX Runtime trace, ignoring the first ``skip_runs`` runs (the warm-up).

    The first run of a session allocates memory and fills caches: profile warm-up runs too, then
    skip them here, or they distort the table.
    """
    if not isinstance(skip_runs, int) or skip_runs < 0:
        raise ValueError(f"skip_runs expected an int >= 0, got {skip_runs!r}")
    events = _events(path)
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) <= skip_runs:
        raise ValueError(f"the trace holds {len(runs)} run(s); cannot skip {skip_runs}: profile more runs")
    kept = runs[skip_runs:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in kept]
    start = windows[0][0]
    nodes = [e for e in events if is_operator_event(e) and e.get("ts", -1) >= start
             and any(lo <= e["ts"] <= hi for lo, hi in windows)]
    by_type: dict[str, list[float]] = defaultdict(list)
    by_node: dict[tuple[str, str], float] = defaultdict(float)
    providers = set()
    for e in nodes:
        args = e.get("args", {})
        op = args.get("op_name", "?")
        by_type[op].append(float(e["dur"]))
        by_node[e["name"].removesuffix(KERNEL_SUFFIX), op] += float(e["dur"])
        if "provider" in args:
            providers.add(args["provider"])
    node_us = sum(sum(v) for v in by_type.values())
    rows = sorted((OperatorRow(op, sum(v), len(v), sum(v) / node_us if node_us else 0.0) for op, v in by_type.items()),
                  key=lambda r: -r.total_us)
    slowest = sorted(((name, op, total / len(kept)) for (name, op), total in by_node.items()), key=lambda r: -r[2])[:top]
    return OrtProfile(len(kept), float(sum(e["dur"] for e in kept)), node_us, tuple(rows), tuple(slowest),
                      tuple(sorted(providers)))


__all__ = ["OperatorRow", "OrtProfile", "ort_profile"]
