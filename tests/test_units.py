"""One unit per quantity (issue 32, item 4): a size divided by 2**20 (or 1024**2, 1 << 20, >> 20) is MiB and must
say "MiB"; the course prints file and package sizes in MB = 10^6 bytes through ``dk.file_mb`` and
``dk.installed_mb``, and KB = 1000 bytes (``dk.quantize.file_size_kb``); bytes / 1024 is KiB. A kB figure divided by 1024 and printed as "MB" (``VmHWM`` is in kB) is the same mistake.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted((ROOT / "solutions").glob("lab*.ipynb"))

BINARY_MEGA = re.compile(r"/\s*\(?\s*(?:2\s*\*\*\s*20|1024\s*\*\*\s*2|\(?1\s*<<\s*20\)?|1_?048_?576|1024\s*/\s*1024|1024\s*\*\s*1024)\b"
                         r"|>>\s*20\b")
FUNCTION_SAYS_MB = re.compile(r"\bdef\s+\w*_mb\s*\(")
#: a kilobyte figure divided by 1024 is KiB; the course's KB is 1000 bytes (dk.quantize.file_size_kb)
KIB_DIVIDED = re.compile(r"/\s*(?:1024|2\s*\*\*\s*10)\b(?!\s*[/*])|>>\s*10\b")
SAYS_KB = re.compile(r"\b[kK]B\b|_kb\b")
FUNCTION_SAYS_KB = re.compile(r"\bdef\s+\w*_kb\s*\(")
KB_TO_MB = re.compile(r"(?:VmHWM|VmRSS|ru_maxrss)[^\n]*\)\s*/\s*1024\b")
KB_READING = re.compile(r"VmHWM|VmRSS|ru_maxrss")
KB_DIVIDED = re.compile(r"\)\s*/\s*1024\b(?!\s*[/*])")
SAYS_MB = re.compile(r"(?<!i)\bMB\b|_mb\b")


def mib_printed_as_mb(source: str) -> list[str]:
    """Lines of ``source`` that divide by a binary megabyte, or turn kB into "MB" by / 1024, and call it MB."""
    found = []
    lines = source.splitlines()
    for i, line in enumerate(lines):
        # a kB reading may be parsed up to 12 lines above its "/ 1024", inside a function named ..._mb
        above = "\n".join(lines[max(0, i - 12):i + 1])
        binary = BINARY_MEGA.search(line) or KB_TO_MB.search(line) or (
            KB_READING.search(above) and KB_DIVIDED.search(line))
        function_mb = FUNCTION_SAYS_MB.search("\n".join(lines[max(0, i - 3):i]))
        if binary and (SAYS_MB.search(line) or function_mb or (KB_DIVIDED.search(line) and SAYS_MB.search(above))) \
                and "MiB" not in above:
            found.append(line.strip())
    return found


def kib_printed_as_kb(source: str) -> list[str]:
    """Lines of ``source`` that divide bytes by 1024 and call the result KB (or are a function named ..._kb)."""
    lines = source.splitlines()
    return [line.strip() for i, line in enumerate(lines)
            if KIB_DIVIDED.search(line) and "KiB" not in line and not re.search(r"VmHWM|VmRSS|ru_maxrss", line)
            and (SAYS_KB.search(line) or FUNCTION_SAYS_KB.search("\n".join(lines[max(0, i - 3):i])))]


def code(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
                     if c["cell_type"] == "code")


def test_the_scan_catches_mib_called_mb():
    assert mib_printed_as_mb('print(f"{path.stat().st_size / 2**20:.1f} MB")')
    assert mib_printed_as_mb("resnet_mb = {k: p.stat().st_size / 2**20 for k, p in files.items()}")
    assert mib_printed_as_mb('x = f"{n / 1024 / 1024:.0f} MB"')
    assert mib_printed_as_mb("peak_mb = int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))) / 1024")
    assert not mib_printed_as_mb('print(f"{n / 2**20:.0f} MiB")')
    assert not mib_printed_as_mb('print(f"{dk.file_mb(path):.1f} MB")')
    assert not mib_printed_as_mb('print(f"{n / 1024:.1f} KB")')
    assert mib_printed_as_mb('print(f"{n / (1024 * 1024):.1f} MB")')
    assert mib_printed_as_mb('size_mb = path.stat().st_size >> 20')
    assert mib_printed_as_mb("def weights_mb(model):\n    return sum(t.nbytes for t in model) / 2**20")
    assert not mib_printed_as_mb("def weights_mb(model):\n    return sum(t.nbytes for t in model) / 1e6")


def test_the_scan_catches_kib_called_kb():
    assert kib_printed_as_kb('print(f"{path.stat().st_size / 1024:.1f} KB")')
    assert kib_printed_as_kb("size_kb = {k: p.stat().st_size / 1024 for k, p in files.items()}")
    assert kib_printed_as_kb("def files_kb(paths):\n    return sum(p.stat().st_size for p in paths) / 1024")
    assert kib_printed_as_kb('print(f"{n / 2**10:.1f} kB")') and kib_printed_as_kb('size_kb = n >> 10')
    assert not kib_printed_as_kb('print(f"{path.stat().st_size / 1000:.1f} KB")')
    assert not kib_printed_as_kb('print(f"per token of context: {cache(1) / 1024:.0f} KiB")')


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_kib_is_printed_as_kb(path):
    assert not kib_printed_as_kb(code(path)), f"{path.name}: KiB called KB; divide bytes by 1000 (the course's KB) or say KiB"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_mib_is_printed_as_mb(path):
    assert not mib_printed_as_mb(code(path)), f"{path.name}: MiB called MB; use dk.file_mb (10^6 bytes) or say MiB"


MODULES = sorted((ROOT / "deploykit").rglob("*.py")) + sorted((ROOT / "tools").glob("*.py"))


def test_the_scan_catches_a_kb_figure_called_mb_in_a_module():
    assert mib_printed_as_mb('def _hwm_mb(pid):\n    for line in status.splitlines():\n        if line.startswith("VmHWM:"):\n'
                             '            return int(line.split()[1]) / 1024')
    assert not mib_printed_as_mb('def _hwm_mb(pid):\n        if line.startswith("VmHWM:"):\n            return int(line.split()[1]) * 1024 / 1e6')
    assert mib_printed_as_mb("self.total_mb = max(self.total_mb, total / 2**20)")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_reports_mib_as_mb(path):
    assert not kib_printed_as_kb(path.read_text(encoding="utf-8")), (
        f"{path.relative_to(ROOT)}: KiB called KB; divide bytes by 1000 (the course's KB) or say KiB")
    assert not mib_printed_as_mb(path.read_text(encoding="utf-8")), (
        f"{path.relative_to(ROOT)}: MiB called MB; divide bytes by 1e6 (the course's MB) or say MiB")
