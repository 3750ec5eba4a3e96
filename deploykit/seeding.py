"""One call to make a notebook's randomness repeatable."""
from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int = 0) -> int:
    """Seed Python, NumPy and (if installed) PyTorch; return the seed.

    PyTorch is also told to prefer deterministic kernels, so a rerun gives the same numbers.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed_everything expected a non-negative int, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # the ORT-only deployment path has no torch
        return seed
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return seed
