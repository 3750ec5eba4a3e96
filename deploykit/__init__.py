"""deploykit: the helper package of the course *Model Deployment, from PyTorch to ONNX Runtime and LiteRT*.

It hides boilerplate (data, caching, timing, drawing), never the lesson: the export, session and
conversion calls stay in the notebooks. Import it first in a notebook: it also quiets the native
log output of TensorFlow/LiteRT before those libraries load (see ``deploykit._quiet``).
"""
from __future__ import annotations

import importlib

from . import _quiet  # noqa: F401  (must run before torch / litert_torch are imported)
from . import _offline  # noqa: F401  (under the tests: refuse non-loopback connections)
from ._quiet import native_stderr_captured, native_stderr_silenced, native_stdout_silenced
from .paths import artifact_path, artifacts_dir, repo_root
from .seeding import seed_everything

__version__ = "0.1.0"

# Heavier helpers load on first use, so `import deploykit` works even before torch is installed.
_LAZY = {
    "load_digits_split": "data", "load_sample_image": "data", "sample_image_path": "data",
    "preprocess_imagenet": "data", "DigitsSplit": "data",
    "DigitsCNN": "models", "train_digits_model": "models", "digits_model": "models", "reference_accuracy": "models", "reference_checkpoint": "models",
    "digits_example_input": "models", "torchvision_model": "models", "torchvision_names": "models",
    "accuracy": "models", "count_parameters": "models",
    "benchmark": "bench", "BenchResult": "bench", "machine_info": "bench", "print_machine_info": "bench",
    "cpu_model": "bench", "cpu_features": "bench", "percentile": "bench", "time_scale": "bench",
    "parity_report": "parity", "ParityReport": "parity",
    "load_graph": "graphs", "onnx_graph": "graphs", "tflite_graph": "graphs", "draw_graph": "graphs", "Graph": "graphs", "graph_from_fx": "graphs",
    "show_netron": "netron",
    "count_flops": "flops",
    "installed_bytes": "installed", "installed_mb": "installed", "file_mb": "installed",
    "export_onnx": "exports", "strip_debug_info": "exports", "digits_onnx": "exports", "resnet18_onnx": "exports",
}


_SUBMODULES = {"bench", "checks", "data", "exports", "flops", "graphs", "installed", "litert", "models", "netron", "ortformat", "parity", "pitfalls", "profiling", "quantize", "radio", "setup_check"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deploykit' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY) + list(_SUBMODULES))


__all__ = ["artifact_path", "artifacts_dir", "native_stderr_captured", "native_stderr_silenced", "native_stdout_silenced", "repo_root", "seed_everything", *_LAZY]
