"""Where generated files live: one git-ignored ``artifacts/`` folder, created on demand."""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path:
    """The course checkout (the folder holding ``pyproject.toml`` beside ``deploykit/``).

    Falls back to the current folder when deploykit is installed without the repository
    (for example ``pip install`` on Colab).
    """
    candidate = _PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").exists() and (candidate / "notebooks").is_dir():
        return candidate
    return Path.cwd()


def artifacts_dir() -> Path:
    """The artifacts folder (``$DEPLOYKIT_ARTIFACTS`` or ``<repo>/artifacts``), created if missing."""
    root = Path(os.environ.get("DEPLOYKIT_ARTIFACTS", repo_root() / "artifacts"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def artifact_path(name: str) -> Path:
    """Path of a generated file such as ``"resnet18.onnx"`` inside the artifacts folder.

    ``name`` may contain sub-folders (``"lab03/digits.onnx"``); they are created. Absolute paths
    and ``..`` are refused so that nothing is written outside the artifacts folder.
    """
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise ValueError(f"artifact_path expected a non-empty file name like 'model.onnx', got {name!r}")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(
            f"artifact_path expected a name relative to the artifacts folder, got {str(name)!r}"
        )
    path = artifacts_dir() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
