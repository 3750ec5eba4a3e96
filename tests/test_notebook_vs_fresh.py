"""tools/notebook_vs_fresh.py (issue 37): lecture 06 or 10 in a kernel against a fresh process. Its pure parts:
the cell it executes up to, the lines it reads, the verdict it gives (the run itself takes minutes)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("notebook_vs_fresh", ROOT / "tools" / "notebook_vs_fresh.py")
tool = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = tool  # dataclasses look their module up
spec.loader.exec_module(tool)


@pytest.mark.parametrize("name", sorted(tool.LECTURES))
def test_each_committed_lecture_has_the_cell_and_its_output_parses(name):
    lecture = tool.LECTURES[name]
    cells = json.loads(lecture.notebook.read_text())["cells"]
    index = tool.comparison_cell(cells, lecture)
    text = "".join("".join(o.get("text", "")) for o in cells[index]["outputs"])
    medians = tool.parse_medians(text, lecture=lecture)
    runtimes = {"06": {"PyTorch", "ONNX Runtime"}, "10": {"ONNX Runtime"}}[name]
    assert set(medians) == {(runtime, t) for runtime in runtimes for t in (1, 2)}
    assert all(ms > 0 for ms in medians.values())
    # each figure is one the fresh process measures too (bench_ort_vs_torch: PyTorch and ORT, ResNet-18, batch 1)
    assert {runtime for runtime, _ in medians} <= {"PyTorch", "ONNX Runtime"}
    with pytest.raises(ValueError, match="has the lecture changed"):
        tool.comparison_cell([c for c in cells if lecture.marker not in "".join(c["source"])], lecture)


def test_lecture_10_reads_resnet_rows_not_the_digits_cnn_or_openvino():
    text = ("digits CNN  1 thread(s): ONNX Runtime    0.028 (   0.033)   OpenVINO    0.061 (   0.076)   OpenVINO/ORT  2.18x\n"
            "ResNet-18   1 thread(s): ONNX Runtime   40.793 (  40.845)   OpenVINO   31.651 (  35.368)   OpenVINO/ORT  0.78x\n"
            "ResNet-18   2 thread(s): ONNX Runtime   16.651 (  17.141)   OpenVINO   22.458 (  24.252)   OpenVINO/ORT  1.35x\n")
    assert tool.parse_medians(text, lecture=tool.LECTURES["10"]) == {("ONNX Runtime", 1): 40.793, ("ONNX Runtime", 2): 16.651}
    with pytest.raises(ValueError, match="ResNet-18   2 thread"):
        tool.parse_medians("PyTorch: median 71.100 ms (x) (batch 1, 2 thread(s), 3 rounds)", lecture=tool.LECTURES["10"])


def test_parse_reads_only_the_batch_asked_for_and_says_what_it_expected():
    text = ("PyTorch: median 71.100 ms (round medians 66.699-79.976), max 83.808 ms (batch 1, 1 thread(s), 3 rounds)\n"
            "ONNX Runtime: median 21.731 ms (round medians 20.775-24.180), max 27.575 ms (batch 1, 2 thread(s), 3 rounds)\n"
            "PyTorch: median 99.000 ms (round medians 98-99), max 99.5 ms (batch 2, 1 thread(s), 3 rounds)\n")
    assert tool.parse_medians(text) == {("PyTorch", 1): 71.1, ("ONNX Runtime", 2): 21.731}
    with pytest.raises(ValueError, match="expected lines like"):
        tool.parse_medians("ORT speed-up 2.00x")


def test_the_verdict_uses_the_median_ratio_of_alternated_pairs():
    key = ("PyTorch", 2)
    agree = [({key: 50.0}, {key: 48.0}), ({key: 60.0}, {key: 58.0}), ({key: 45.0}, {key: 47.0})]
    (_, inside, fresh, ratio, within), = tool.verdicts(agree, 0.10)
    assert (inside, fresh, within) == (50.0, 48.0, True) and ratio == pytest.approx(60 / 58)  # the median of 50/48, 60/58, 45/47
    # issue 37's AMD figures: PyTorch 32.1 ms at 2 threads in the notebook, 22.5 ms in a fresh process
    apart = [({key: 32.1}, {key: 22.5})] * 3
    assert tool.verdicts(apart, 0.10)[0][-1] is False
    one_bad_pair = agree[:2] + [({key: 90.0}, {key: 45.0})]  # one pair on a busy moment does not decide
    assert tool.verdicts(one_bad_pair, 0.10)[0][-1] is True
    with pytest.raises(ValueError, match="in common"):
        tool.verdicts([({key: 1.0}, {("ONNX Runtime", 1): 1.0})], 0.10)
