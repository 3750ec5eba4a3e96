"""What notebook 00 checks: every pinned package imports at its pinned version."""
from __future__ import annotations

import importlib
import re
import sys
from importlib import metadata
from pathlib import Path

from ._quiet import native_stderr_silenced, native_stdout_silenced
from .paths import repo_root

# Distribution name -> module to import, where they differ.
IMPORT_NAMES = {
    "scikit-learn": "sklearn", "pillow": "PIL", "pyyaml": "yaml", "litert-torch": "litert_torch",
    "ai-edge-litert": "ai_edge_litert.interpreter", "jupyter-server-proxy": "jupyter_server_proxy",
    "mnn": "MNN", "litert-lm-api": "litert_lm",
}
# Imported only to show they install; the kernel does not need them at run time.
NOT_IMPORTED = {"jupyterlab", "playwright", "pytest", "nbval"}


def pinned_requirements(path: Path | None = None) -> dict[str, str]:
    """``{distribution: version}`` from requirements.txt."""
    path = path or repo_root() / "requirements.txt"
    if not path.is_file():
        raise FileNotFoundError(f"expected the course's requirements.txt at {path}")
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def check_package(name: str, pinned: str) -> tuple[bool, str]:
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        return False, f"[FAIL] {name}: not installed (pinned {pinned}); run `make install`"
    if installed.split("+")[0] != pinned:
        return False, f"[FAIL] {name} {installed}: the course is pinned to {pinned}; run `make install`"
    if name not in NOT_IMPORTED:
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        try:
            # Some native libraries print on import (MNN: the CPU's features); keep the list clean.
            with native_stdout_silenced(), native_stderr_silenced():
                importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - report any import failure as a line
            return False, f"[FAIL] {name} {installed}: `import {module}` failed: {type(error).__name__}: {error}"
    return True, f"[OK]   {name} {installed.split('+')[0]}"


#: Python versions on which the whole course (install, every notebook, strict outputs) was verified.
VERIFIED_PYTHONS = ((3, 11), (3, 12))
#: The oldest Python the pinned packages support.
MINIMUM_PYTHON = (3, 11)


def check_python(version: tuple[int, int] | None = None) -> tuple[bool, str]:
    """``[OK]`` for a verified Python, ``[WARN]`` (not a failure) for a newer unverified one,
    ``[FAIL]`` below the minimum."""
    major, minor = version or sys.version_info[:2]
    verified = ", ".join(f"{a}.{b}" for a, b in VERIFIED_PYTHONS)
    if (major, minor) in VERIFIED_PYTHONS:
        return True, f"[OK]   Python {major}.{minor}"
    if (major, minor) < MINIMUM_PYTHON:
        return False, f"[FAIL] Python {major}.{minor}: the course needs Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or newer"
    return True, (f"[WARN] Python {major}.{minor}: not verified (verified: {verified}); it should work if `make install` "
                  f"succeeded. If an output differs, tell the course (README, 'If an output differs')")


def check_environment() -> list[str]:
    """One ``[OK]``/``[FAIL]`` line for every pinned package (the same lines on every machine).

    Python's own line comes from :func:`check_python`, because it names the version in use.
    """
    return [check_package(name, version)[1] for name, version in pinned_requirements().items()]
