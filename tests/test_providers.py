"""deploykit.providers: placement read from the session, require_provider checks it (not registration)."""
from __future__ import annotations

import onnxruntime as ort
import pytest

import deploykit as dk
from deploykit.providers import RECORD_PLACEMENT, placement, require_provider


def session(providers, record=True):
    options = ort.SessionOptions()
    if record:
        options.add_session_config_entry(RECORD_PLACEMENT, "1")
    return ort.InferenceSession(str(dk.digits_onnx()), options, providers=providers)


def test_placement_counts_every_node_on_the_provider_that_runs_it():
    counts = placement(session(["CPUExecutionProvider"]))
    assert list(counts) == ["CPUExecutionProvider"] and counts["CPUExecutionProvider"] >= 5


def test_registered_is_not_placed():
    # Azure is registered (get_providers lists it) but runs no node: the old check passed, this one fails
    both = session(["AzureExecutionProvider", "CPUExecutionProvider"])
    assert "AzureExecutionProvider" in both.get_providers()
    assert "AzureExecutionProvider" not in placement(both)
    with pytest.raises(RuntimeError, match=r"AzureExecutionProvider runs 0% .*registered but cannot take"):
        require_provider(both, "AzureExecutionProvider")
    with pytest.raises(RuntimeError, match="AzureExecutionProvider runs 0%"):
        require_provider(both, "AzureExecutionProvider", min_share=0.01)   # a small share still needs one node
    assert require_provider(both, "CPUExecutionProvider") == placement(both)


def test_missing_provider_says_install():
    with pytest.warns(UserWarning):
        fallen_back = session(["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="install the package"):
        require_provider(fallen_back, "CUDAExecutionProvider")


class FakeSubgraph:
    def __init__(self, ep_name, nodes):
        self.ep_name, self._nodes = ep_name, nodes

    def get_nodes(self):
        return [object()] * self._nodes


class FakeSession:
    """A partial fallback (what an NPU session looks like): 8 nodes on the NPU provider, 2 on the CPU."""

    def get_session_options(self):
        options = ort.SessionOptions()
        options.add_session_config_entry(RECORD_PLACEMENT, "1")
        return options

    def get_providers(self):
        return ["QNNExecutionProvider", "CPUExecutionProvider"]

    def get_provider_graph_assignment_info(self):
        return [FakeSubgraph("QNNExecutionProvider", 5), FakeSubgraph("CPUExecutionProvider", 2),
                FakeSubgraph("QNNExecutionProvider", 3)]


def test_partial_fallback_fails_by_default_and_passes_a_stated_share():
    fake = FakeSession()
    assert placement(fake) == {"QNNExecutionProvider": 8, "CPUExecutionProvider": 2}
    with pytest.raises(RuntimeError, match=r"runs 80% of the 10 nodes \(required: 100%\).*CPUExecutionProvider 2"):
        require_provider(fake, "QNNExecutionProvider")
    with pytest.raises(RuntimeError, match="required: 90%"):
        require_provider(fake, "QNNExecutionProvider", min_share=0.9)
    assert require_provider(fake, "QNNExecutionProvider", min_share=0.8)["QNNExecutionProvider"] == 8


def test_validates_its_input():
    with pytest.raises(ValueError, match="record_ep_graph_assignment_info"):
        placement(session(["CPUExecutionProvider"], record=False))
    for bad in (0, 1.5, "all"):
        with pytest.raises(ValueError, match="min_share"):
            require_provider(FakeSession(), "QNNExecutionProvider", min_share=bad)
