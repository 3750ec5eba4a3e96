"""Sizes on disk, one unit: an installed Python distribution (lectures 05, 06, 12) and a model file (everywhere).

The course reports sizes in **MB = 10^6 bytes**, as pip and PyPI do; lectures once printed the same wheel as
69 MB (decimal) and 61.4 "MB" (computed in MiB), which read as two different packages.
"""
from __future__ import annotations

from importlib import metadata
from os import PathLike
from pathlib import Path

MB = 1_000_000  #: bytes in the course's megabyte


def installed_bytes(distribution: str) -> int:
    """Bytes of every file ``distribution`` installed: the sizes pip recorded in its RECORD, else the file on disk.

    Raises ``ValueError`` naming the distribution when it is not installed in this environment."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise ValueError(f"installed_bytes: no distribution {distribution!r} is installed in this environment "
                         f"(expected a pip name such as 'onnxruntime'; `pip show {distribution}` tells)") from None
    total = 0
    for file in dist.files or []:
        if file.size is not None:
            total += file.size
        elif dist.locate_file(file).is_file():
            total += dist.locate_file(file).stat().st_size
    return total


def installed_mb(distribution: str) -> float:
    """:func:`installed_bytes` in MB (10^6 bytes)."""
    return installed_bytes(distribution) / MB


def file_mb(path: str | PathLike) -> float:
    """Size of the file at ``path`` in MB (10^6 bytes), the unit every lecture prints file sizes in.

    Raises ``FileNotFoundError`` naming the file when it is missing (export or download it first)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file_mb: no file at {str(path)!r} (expected a model or archive the notebook wrote)")
    return path.stat().st_size / MB
