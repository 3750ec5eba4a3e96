"""The course's reference digits model, shipped in deploykit/assets: its bytes, its loading, its use."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch

import deploykit as dk
from deploykit import models

# The released checkpoint. `make reference-model` rewrites the file and models.REFERENCE_SHA256;
# whoever does that must update this line too, knowingly.
RELEASED_SHA256 = "89fe789efddaa93d6eb45ddc86f256d40cad706cda1bb76bd93610c0dc8e9ebb"


def test_shipped_checkpoint_is_the_released_one():
    data = models.REFERENCE_CHECKPOINT.read_bytes()
    assert hashlib.sha256(data).hexdigest() == RELEASED_SHA256 == models.REFERENCE_SHA256
    assert 100_000 < len(data) < 300_000  # a state_dict of ~38k float32 values, not an LFS pointer


def test_reference_model_loads_in_eval_mode_and_is_accurate():
    model = dk.digits_model()
    assert isinstance(model, dk.DigitsCNN) and not model.training
    assert dk.reference_accuracy() >= 0.98
    split = dk.load_digits_split()
    with torch.inference_mode():
        logits = model(torch.from_numpy(split.x_test)).numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    # Every test digit is decided with a clear margin: float rounding on any CPU cannot flip one,
    # which is what lets the lectures compare the float accuracy strictly.
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3


def test_reference_model_is_not_retrained_or_cached(tmp_artifacts):
    dk.digits_model()
    assert not list(tmp_artifacts.glob("**/*.pth"))  # loaded from the package, nothing trained or cached


def test_a_changed_checkpoint_is_refused_with_the_fix(tmp_path, monkeypatch):
    copy = tmp_path / "digits_cnn.pth"
    shutil.copy(models.REFERENCE_CHECKPOINT, copy)
    with copy.open("ab") as handle:
        handle.write(b"x")
    monkeypatch.setattr(models, "REFERENCE_CHECKPOINT", copy)
    with pytest.raises(ValueError, match="git checkout -- deploykit/assets/digits_cnn.pth"):
        dk.digits_model()
    monkeypatch.setattr(models, "REFERENCE_CHECKPOINT", tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="reference digits model is missing"):
        dk.digits_model()


def test_cached_onnx_export_follows_the_weights(tmp_artifacts):
    import onnx

    path = dk.digits_onnx()
    tags = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert tags["deploykit.weights_sha256"] == models.REFERENCE_SHA256
    # An export of other weights (an older course version) is replaced, not reused.
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        prop.value = "0" * 64
    onnx.save(model, str(path))
    assert dk.exports._weights_tag(path) == "0" * 64
    again = dk.digits_onnx()
    assert dk.exports._weights_tag(again) == models.REFERENCE_SHA256


def test_reference_model_tool_refuses_without_force(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_reference_model", dk.repo_root() / "tools" / "make_reference_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([]) == 1
    assert "pass --force" in capsys.readouterr().out
