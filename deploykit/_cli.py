"""What the helper package's commands (``python -m deploykit.lm_executorch``, ``... lm_litert``) share."""
from __future__ import annotations

import argparse


def positive_tokens(text: str) -> int:
    """An argparse type: a whole number of tokens or positions, at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of tokens, got {text}")
    return value
