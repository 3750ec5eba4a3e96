"""The course's models: a small digits CNN trained in seconds, and torchvision architectures.

No weights are ever downloaded. The digits model comes in two forms:

* :func:`digits_model` loads the **reference checkpoint shipped inside this package**
  (``deploykit/assets/digits_cnn.pth``, its SHA-256 checked on load). Every notebook after lecture 01
  uses it, so every learner deploys the very same weights: float32 training is not bit-identical
  across CPUs (AVX-512 vs AVX2 kernels sum in another order), and a model trained on each machine
  would move every figure downstream of its weights.
* :func:`train_digits_model` trains the same architecture live in a few seconds (lecture 01, the
  "training framework" end of the pipeline) and caches it in ``artifacts/``.

``tools/make_reference_model.py`` (``make reference-model``) regenerates the shipped checkpoint.
torchvision architectures are built with ``weights=None`` (random, seeded): weights do not change
a graph, its size or its speed.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DIGITS_SHAPE, load_digits_split
from .paths import artifact_path

TRAIN_CONFIG = {"epochs": 15, "batch_size": 64, "lr": 3e-3, "seed": 0}

#: The course's reference digits model, shipped with the package (``make reference-model`` rewrites
#: the file and this hash together).
REFERENCE_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "digits_cnn.pth"
REFERENCE_SHA256 = "89fe789efddaa93d6eb45ddc86f256d40cad706cda1bb76bd93610c0dc8e9ebb"


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU x2, max-pool, two linear layers: 1x8x8 digit -> 10 logits (about 38k params).

    BatchNorm and Dropout are there on purpose: they behave differently in train and eval mode
    (lecture 03) and BatchNorm is folded into the convolution by ONNX Runtime (lecture 06).
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class TrainResult:
    """What :func:`train_digits_model` returns: the model in eval mode and how training went."""

    model: DigitsCNN
    test_accuracy: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    checkpoint: str = ""
    from_cache: bool = False


def _config_key(config: dict) -> str:
    payload = json.dumps({**config, "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on NCHW float32 ``x`` with integer labels ``y``."""
    with torch.inference_mode():
        predictions = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predictions == y).mean())


def train_digits_model(retrain: bool = False, **overrides) -> TrainResult:
    """Train :class:`DigitsCNN` on the digits train split, deterministically, in a few seconds.

    The state_dict is cached as ``artifacts/digits_cnn-<config hash>.pth``; later calls (and later
    notebooks) load it instead of training, unless ``retrain=True``. Training runs on one thread so
    the weights are the same on every machine size.
    """
    unknown = set(overrides) - set(TRAIN_CONFIG)
    if unknown:
        raise ValueError(f"unknown training option(s) {sorted(unknown)}; expected some of {sorted(TRAIN_CONFIG)}")
    config = {**TRAIN_CONFIG, **overrides}
    checkpoint = artifact_path(f"digits_cnn-{_config_key(config)}.pth")
    split = load_digits_split()
    model = DigitsCNN()
    if checkpoint.exists() and not retrain:
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
        model.eval()
        return TrainResult(model, accuracy(model, split.x_test, split.y_test),
                           checkpoint=str(checkpoint), from_cache=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        torch.manual_seed(config["seed"])
        model = DigitsCNN()
        optimiser = torch.optim.Adam(model.parameters(), lr=config["lr"])
        loss_fn = nn.CrossEntropyLoss()
        x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
        generator = torch.Generator().manual_seed(config["seed"])
        losses = []
        model.train()
        for _ in range(config["epochs"]):
            order = torch.randperm(len(x), generator=generator)
            epoch_loss = 0.0
            for i in range(0, len(x), config["batch_size"]):
                batch = order[i : i + config["batch_size"]]
                optimiser.zero_grad()
                loss = loss_fn(model(x[batch]), y[batch])
                loss.backward()
                optimiser.step()
                epoch_loss += loss.item() * len(batch)
            losses.append(epoch_loss / len(x))
        model.eval()
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    torch.save(model.state_dict(), checkpoint)
    return TrainResult(model, accuracy(model, split.x_test, split.y_test), losses, seconds, str(checkpoint))


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reference_checkpoint() -> Path:
    """Path of the shipped reference checkpoint, after checking that its bytes are the released ones."""
    path = REFERENCE_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"the course's reference digits model is missing: expected {path}. It ships with the "
            "repository (git checkout -- deploykit/assets/digits_cnn.pth restores it)."
        )
    digest = file_sha256(path)
    if digest != REFERENCE_SHA256:
        raise ValueError(
            f"{path.name} has SHA-256 {digest[:12]}..., expected {REFERENCE_SHA256[:12]}...: the file was "
            "changed. Restore it with `git checkout -- deploykit/assets/digits_cnn.pth`, or, if you "
            "maintain the course and meant to change it, run `make reference-model`."
        )
    return path


def digits_model() -> DigitsCNN:
    """The course's reference digits model in eval mode: the checkpoint shipped with deploykit.

    The same weights on every machine, so every figure downstream of them (exports, quantisation
    scales, accuracies) is the same wherever the course runs. :func:`train_digits_model` trains one live.
    """
    model = DigitsCNN()
    model.load_state_dict(torch.load(reference_checkpoint(), weights_only=True))
    return model.eval()


def reference_accuracy() -> float:
    """Top-1 accuracy of :func:`digits_model` on the digits test split (360 images)."""
    split = load_digits_split()
    return accuracy(digits_model(), split.x_test, split.y_test)


def digits_example_input(batch: int = 1) -> torch.Tensor:
    """A deterministic example input for export: the first ``batch`` test images."""
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch expected a positive int, got {batch!r}")
    x = load_digits_split().x_test
    if batch > len(x):
        raise ValueError(f"batch expected at most {len(x)} (the test split), got {batch}")
    return torch.from_numpy(x[:batch].copy())


def torchvision_names() -> list[str]:
    """Classification architectures torchvision can build (no weights needed)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_model(name: str, seed: int = 0, num_classes: int = 1000) -> nn.Module:
    """A torchvision classifier such as ``"resnet18"``, randomly initialised (seeded), in eval mode.

    ``weights=None``: nothing is downloaded. Pretrained weights change the numbers, not the graph.
    """
    import torchvision

    names = torchvision_names()
    if name not in names:
        close = [n for n in names if n.startswith(str(name)[:4])] or names[:8]
        raise ValueError(f"unknown torchvision model {name!r}; expected one of e.g. {close}")
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "DIGITS_SHAPE", "DigitsCNN", "TrainResult", "accuracy", "count_parameters", "digits_example_input",
    "digits_model", "file_sha256", "reference_accuracy", "reference_checkpoint", "REFERENCE_SHA256",
    "torchvision_model", "torchvision_names", "train_digits_model",
]
