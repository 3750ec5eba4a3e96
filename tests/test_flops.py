"""deploykit.flops: FLOPs from an ONNX graph, checked by hand and against torch's own counter."""
from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.utils.flop_counter import FlopCounterMode

import numpy as np

from deploykit.flops import count_flops


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _init(name, shape):
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def test_conv_by_hand_with_stride_padding_groups_and_bias():
    # 2x8x16x16 input, 16 output channels, groups 2, 3x3 kernel, stride 2, pad 1 -> output 2x16x8x8
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    model = _model([conv], [x], [y], [_init("w", (16, 4, 3, 3)), _init("b", (16,))])
    report = count_flops(model, batch=2)
    outputs = 2 * 16 * 8 * 8
    assert report.total == 2 * outputs * 4 * 3 * 3 + outputs
    assert report.macs == outputs * 4 * 3 * 3
    assert report.input_shapes == {"x": (2, 8, 16, 16)}


def test_gemm_transposed_and_matmul_batched():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [5, 7])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    gemm = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1)
    report = count_flops(_model([gemm], [a], [y], [_init("w", (3, 7)), _init("c", (3,))]))
    assert report.total == 2 * 5 * 3 * 7 + 5 * 3

    p = helper.make_tensor_value_info("p", TensorProto.FLOAT, [4, 6, 10, 12])
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [12, 9])
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, None)
    matmul = helper.make_node("MatMul", ["p", "q"], ["o"])
    report = count_flops(_model([matmul], [p, q], [out]))
    assert report.total == 2 * 4 * 6 * 10 * 9 * 12
    assert report.by_op == {"MatMul": report.total}


def test_elementwise_is_optional_and_uncounted_ops_are_listed():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    model = _model(nodes, [x], [y])
    assert count_flops(model).total == 0
    assert count_flops(model).uncounted == {"Relu": 1, "Identity": 1}
    assert count_flops(model, include_elementwise=True).total == 6


@pytest.mark.parametrize("batch", [1, 3])
def test_digits_model_matches_torch_flop_counter(batch):
    import deploykit as dk

    report = count_flops(dk.digits_onnx(), batch=batch)
    model, x = dk.digits_model(), dk.digits_example_input(batch)  # built outside the counter
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    # torch's counter leaves out bias additions; ours adds one FLOP per biased output element.
    assert report.total == pytest.approx(counter.get_total_flops(), rel=0.01)
    assert set(report.by_op) == {"Conv", "Gemm"}


def test_resnet18_known_figure_and_linear_in_batch():
    import deploykit as dk

    one = count_flops(dk.resnet18_onnx(), batch=1)
    assert one.macs == pytest.approx(1.814e9, rel=0.005)  # the published 1.8 GMACs of ResNet-18 at 224x224
    four = count_flops(dk.resnet18_onnx(), input_shapes={"input": (4, 3, 224, 224)})
    assert four.total == 4 * one.total
    assert "GFLOPs" in str(one)


def test_bad_arguments_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="existing .onnx"):
        count_flops(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="ModelProto"):
        count_flops(42)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])
    with pytest.raises(ValueError, match="positive int"):
        count_flops(model, batch=0)
    with pytest.raises(ValueError, match="unknown input"):
        count_flops(model, input_shapes={"nope": (1, 3)})
    fused = _model([helper.make_node("FusedConv", ["x"], ["y"], domain="com.microsoft")], [x], [y])
    fused.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(ValueError, match="original model"):
        count_flops(fused)
