"""Shared fixtures for the unit tests (the notebooks are collected by nbval, not here)."""
from __future__ import annotations

import pytest


@pytest.fixture
def tmp_artifacts(tmp_path, monkeypatch):
    """Point deploykit's artifacts folder at a temporary directory."""
    monkeypatch.setenv("DEPLOYKIT_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"
