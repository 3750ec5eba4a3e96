"""The pins in requirements.txt and environment.yml agree, and the venv matches them."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def requirements_pins() -> dict[str, str]:
    return _pins((ROOT / "requirements.txt").read_text().splitlines())


def environment_pins() -> tuple[dict, dict[str, str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return env, _pins(pip_section)


def test_every_requirement_is_exactly_pinned():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert PIN.match(line), f"requirements.txt: {line!r} is not pinned with =="


def test_environment_yml_parses_and_uses_python_311():
    env, _ = environment_pins()
    assert "python=3.11" in env["dependencies"], env["dependencies"]
    assert "pip" in env["dependencies"]


def test_environment_yml_and_requirements_agree():
    _, conda = environment_pins()
    assert conda == requirements_pins()


def test_course_depends_on_litert_torch_not_the_deprecated_alias():
    pins = requirements_pins()
    assert "litert-torch" in pins and "ai-edge-litert" in pins
    assert "ai-edge-torch" not in pins


def test_packages_the_course_imports_directly_are_pinned():
    """A package imported by name must not float with whatever another pin happens to pull in."""
    pins = requirements_pins()
    imported = {"ai_edge_quantizer": "ai-edge-quantizer", "ai_edge_litert": "ai-edge-litert",
                "litert_torch": "litert-torch", "openvino": "openvino", "pnnx": "pnnx", "ncnn": "ncnn", "MNN": "mnn",
                "onnxruntime_genai": "onnxruntime-genai", "litert_lm": "litert-lm-api",
                "litert_lm_builder": "litert-lm-builder"}
    sources = "\n".join(p.read_text() for p in (ROOT / "deploykit").rglob("*.py"))
    sources += "\n".join(p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb"))
    for module, package in imported.items():
        if re.search(rf"(?:^|\W)(?:import|from) {module}\b", sources):
            assert package in pins, f"{module} is imported directly but {package} is not pinned in requirements.txt"
    assert "ai-edge-quantizer" in pins


def test_installed_versions_match_the_pins():
    mismatched = {}
    for name, version in requirements_pins().items():
        installed = metadata.version(name).split("+")[0]
        if installed != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"pinned vs installed: {mismatched}; run `make install` after changing pins"


def test_lock_file_agrees_with_direct_pins():
    lock = _pins((ROOT / "requirements-lock.txt").read_text().splitlines())
    for name, version in requirements_pins().items():
        assert lock.get(name) == version, f"{name}: requirements.txt {version}, lock {lock.get(name)}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: install\n\t\$\(BIN\)/python -m pytest --nbval$", makefile, re.M)
    assert "--nbval-lax" not in makefile + ci + (ROOT / "pyproject.toml").read_text()


def test_wheel_ships_the_assets_without_setuptools_warnings(tmp_path):
    """pyproject's packaging: deploykit/assets and assets/pydoc_lm (data folders, no __init__.py) are packages
    setuptools finds, so their package-data ships with no 'absent from the packages configuration' warning."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "deploykit", source / "deploykit", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), "-v"], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    log = built.stdout + built.stderr
    assert "absent from the `packages` configuration" not in log, log[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("deploykit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {path.relative_to(ROOT).as_posix() for path in (ROOT / "deploykit" / "assets").rglob("*") if path.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "deploykit/checks/__init__.py" in names and not any("__pycache__" in name for name in names)
