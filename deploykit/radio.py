"""Lab 09's model and data: RadioNet classifies short radio recordings (I/Q samples) by modulation.

A software-defined radio delivers a signal as two channels, in-phase (I) and quadrature (Q): the
real and imaginary parts of a complex baseband signal. :func:`load_radio_split` generates them
(seeded NumPy, no download): four kinds of transmission, each with a random frequency, phase,
amplitude and receiver noise. :class:`RadioNet` uses two operators that a deployment path does not
know: ``torch.hypot`` (the magnitude sqrt(I^2 + Q^2)) and ``torch.logcumsumexp`` (a running soft
maximum of the features over time). Lab 09 makes it export and convert anyway.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: The four transmissions, in label order.
RADIO_CLASSES = ("tone", "am", "fm", "noise")
#: Samples per recording.
RADIO_STEPS = 64


@dataclass(frozen=True)
class RadioSplit:
    """Train and test recordings: ``x`` is float32 ``(N, 2, steps)`` (I and Q), ``y`` int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...] = RADIO_CLASSES

    def __repr__(self) -> str:
        return (f"RadioSplit(train {self.x_train.shape}, test {self.x_test.shape}, "
                f"classes {list(self.classes)})")


def radio_signals(count: int, *, steps: int = RADIO_STEPS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` recordings, the four classes in turn: I/Q float32 ``(count, 2, steps)`` and labels."""
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count expected a positive int, got {count!r}")
    if not isinstance(steps, int) or steps < 8:
        raise ValueError(f"steps expected an int >= 8, got {steps!r}")
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    labels = np.arange(count) % len(RADIO_CLASSES)
    signals = np.empty((count, steps), dtype=np.complex128)
    for row, label in enumerate(labels):
        carrier = rng.uniform(0.02, 0.2)            # cycles per sample
        phase = rng.uniform(0, 2 * np.pi)
        if RADIO_CLASSES[label] == "tone":          # a pure carrier
            s = np.exp(1j * (2 * np.pi * carrier * t + phase))
        elif RADIO_CLASSES[label] == "am":          # amplitude follows a slow message
            message = np.cos(2 * np.pi * rng.uniform(0.01, 0.05) * t + rng.uniform(0, 2 * np.pi))
            s = (1 + rng.uniform(0.5, 0.9) * message) * np.exp(1j * (2 * np.pi * carrier * t + phase))
        elif RADIO_CLASSES[label] == "fm":          # frequency follows a slow message
            beta = rng.uniform(4.0, 8.0)
            s = np.exp(1j * (2 * np.pi * carrier * t + beta * np.sin(2 * np.pi * rng.uniform(0.03, 0.08) * t) + phase))
        else:                                       # no transmission: receiver noise only
            s = (rng.normal(size=steps) + 1j * rng.normal(size=steps)) / np.sqrt(2)
        gain = rng.uniform(0.5, 2.0)
        noise = (rng.normal(size=steps) + 1j * rng.normal(size=steps)) * 0.1
        signals[row] = gain * s + noise
    x = np.stack([signals.real, signals.imag], axis=1).astype(np.float32)
    return x, labels.astype(np.int64)


def load_radio_split(train: int = 2000, test: int = 400, *, steps: int = RADIO_STEPS) -> RadioSplit:
    """The lab's data: ``train`` and ``test`` recordings from independent seeds."""
    x_train, y_train = radio_signals(train, steps=steps, seed=0)
    x_test, y_test = radio_signals(test, steps=steps, seed=1)
    return RadioSplit(x_train, y_train, x_test, y_test)


class RadioNet(nn.Module):
    """I/Q recording ``(N, 2, steps)`` -> logits over the four transmissions ``(N, 4)``."""

    def __init__(self, classes: int = len(RADIO_CLASSES)):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(3, 16, 5, padding=2), nn.ReLU(),
                                      nn.Conv1d(16, 16, 5, padding=2), nn.ReLU())
        self.head = nn.Linear(32, classes)

    def magnitude(self, iq):
        """The envelope: sqrt(I^2 + Q^2) per sample, ``(N, 1, steps)``."""
        return torch.hypot(iq[:, 0:1], iq[:, 1:2])

    def running_energy(self, h):
        """A running soft maximum over time: log(sum over s <= t of exp(h_s)), per channel."""
        return torch.logcumsumexp(h, dim=-1)

    def forward(self, iq):
        h = self.features(torch.cat([iq, self.magnitude(iq)], dim=1))
        soft_peak = self.running_energy(h)
        return self.head(torch.cat([h.mean(dim=-1), soft_peak.mean(dim=-1)], dim=1))


def train_radio_model(split: RadioSplit | None = None, *, epochs: int = 8, seed: int = 0):
    """A RadioNet trained for a few seconds on one thread (seeded), in eval mode."""
    split = split or load_radio_split()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = RadioNet()
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(x), generator=generator).split(64):
                optimiser.zero_grad()
                torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimiser.step()
    finally:
        torch.set_num_threads(previous)
    return model.eval()


__all__ = ["RADIO_CLASSES", "RADIO_STEPS", "RadioNet", "RadioSplit", "load_radio_split", "radio_signals",
           "train_radio_model"]
