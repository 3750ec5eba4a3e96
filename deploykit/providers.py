"""Where an ONNX Runtime session's nodes actually run (placement), and a check that fails loudly.

``session.get_providers()`` lists the providers *registered* with a session, not where its nodes
went: ask for ``["AzureExecutionProvider", "CPUExecutionProvider"]`` and both are listed while every
node runs on the CPU. Placement is per node. ONNX Runtime (1.23+) records it when the session is
created with the config entry ``session.record_ep_graph_assignment_info = 1``, and returns it from
``session.get_provider_graph_assignment_info()``; a profiling trace holds it too (``args.provider``
of each node event, read by :func:`deploykit.profiling.ort_profile`). Lecture 10 teaches both.
"""
from __future__ import annotations

from collections import Counter

RECORD_PLACEMENT = "session.record_ep_graph_assignment_info"


def placement(session) -> dict[str, int]:
    """Number of graph nodes each execution provider was assigned, largest first.

    ``session`` must have been created with ``options.add_session_config_entry(RECORD_PLACEMENT, "1")``.
    """
    try:
        recorded = session.get_session_options().get_session_config_entry(RECORD_PLACEMENT) == "1"
    except RuntimeError:  # ONNX Runtime raises for a key that was never set
        recorded = False
    if not recorded:
        raise ValueError(f"the session does not record its placement: create it with SessionOptions on which "
                         f"add_session_config_entry({RECORD_PLACEMENT!r}, '1') was called")
    counts: Counter[str] = Counter()
    for subgraph in session.get_provider_graph_assignment_info():
        counts[subgraph.ep_name] += len(subgraph.get_nodes())
    return dict(counts.most_common())


def require_provider(session, provider: str, *, min_share: float = 1.0) -> dict[str, int]:
    """Raise ``RuntimeError`` unless ``provider`` runs at least ``min_share`` of the session's nodes.

    ONNX Runtime falls back to the CPU silently, for a provider that is missing (whole graph) or for
    the nodes a provider cannot take (partial fallback, the usual case on NPUs). The default demands
    every node; ``min_share=0.9`` accepts a 10 % fallback, knowingly. Returns the placement.
    """
    if not isinstance(min_share, (int, float)) or not 0 < min_share <= 1:
        raise ValueError(f"min_share expected a fraction in (0, 1], got {min_share!r}")
    counts = placement(session)
    total = sum(counts.values())
    share = counts.get(provider, 0) / total if total else 0.0
    if share < min_share:
        where = ", ".join(f"{name} {count}" for name, count in counts.items())
        registered = list(session.get_providers())
        hint = ("install the package that ships it (e.g. onnxruntime-gpu) and check the drivers"
                if provider not in registered else
                "the provider is registered but cannot take those nodes: see the verbose log "
                "(log_severity_level=0) for why, or accept the share knowingly (min_share)")
        raise RuntimeError(f"{provider} runs {share:.0%} of the {total} nodes (required: {min_share:.0%}); "
                           f"nodes per provider: {where}; registered: {registered}: {hint}")
    return counts


__all__ = ["RECORD_PLACEMENT", "placement", "require_provider"]
