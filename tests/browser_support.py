"""What the two browser tests (the JupyterLab course, the website) share."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (playwright's own browser download cannot run here)
#: Headless as root, and none of Chromium's own background connections (this machine's network is closed).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: A request to any host but this one: the tests route it to a block and fail on it.
OFF_MACHINE = re.compile(r"^(https?|wss?)://(?!(127\.0\.0\.1|localhost)[:/])")

#: Chinese characters: a page showing them needs a CJK font, or they render as boxes.
CJK = re.compile(r"[\u3400-\u9fff]")


def cjk_fonts() -> list[str] | None:
    """The fonts with Chinese glyphs that Chromium can use here (fontconfig), None if fc-list is missing."""
    try:
        listed = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sorted({line.strip() for line in listed.splitlines() if line.strip()})
