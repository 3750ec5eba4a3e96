"""Data that ships inside installed packages: scikit-learn's digits and matplotlib's sample image.

Nothing here reaches the network.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DIGITS_SHAPE = (1, 8, 8)  # channels, height, width of one digits image
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsSplit:
    """scikit-learn's 8x8 digits as float32 NCHW arrays scaled to [0, 1], split 80/20."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __repr__(self) -> str:
        return (
            f"DigitsSplit(x_train={self.x_train.shape}, x_test={self.x_test.shape}, "
            f"dtype={self.x_train.dtype}, classes={len(np.unique(self.y_train))})"
        )


def load_digits_split(test_size: float = 0.2) -> DigitsSplit:
    """The course's data: 1,797 handwritten digits, stratified split with a fixed seed."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size expected a fraction between 0 and 1, got {test_size!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # N, 1, 8, 8
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=SPLIT_SEED, stratify=y
    )
    return DigitsSplit(x_train, y_train, x_test, y_test)


def sample_image_path() -> Path:
    """Path of ``grace_hopper.jpg``, a photo shipped with matplotlib (512x600 RGB)."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def load_sample_image() -> np.ndarray:
    """matplotlib's Grace Hopper photo as an HxWx3 uint8 array."""
    from PIL import Image

    with Image.open(sample_image_path()) as image:
        return np.asarray(image.convert("RGB"))


def preprocess_imagenet(image: np.ndarray, size: int = 224, resize: int = 256) -> np.ndarray:
    """ImageNet-style preprocessing with NumPy and Pillow only (no torch on the deployed path).

    Resize the short side to ``resize``, centre-crop ``size`` x ``size``, scale to [0, 1],
    normalise with the ImageNet mean/std, and return a float32 NCHW batch of one.
    """
    from PIL import Image

    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"preprocess_imagenet expected an HxWx3 uint8 RGB array, got {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"preprocess_imagenet expected dtype uint8 (0-255), got {image.dtype}")
    if resize < size:
        raise ValueError(f"resize ({resize}) must be >= the crop size ({size})")
    height, width = image.shape[:2]
    scale = resize / min(height, width)
    new_w, new_h = round(width * scale), round(height * scale)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top : top + size, left : left + size].astype(np.float32) / 255.0
    normalised = (crop - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])  # HWC -> NCHW
