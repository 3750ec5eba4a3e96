#!/usr/bin/env python
"""Maintainers only: regenerate the course's reference digits model shipped in deploykit/assets/.

Trains DigitsCNN with deploykit's TRAIN_CONFIG (one thread, fixed seeds), writes the state_dict to
``deploykit/assets/digits_cnn.pth`` and the new SHA-256 into ``deploykit/models.py``. Every notebook
after lecture 01 deploys this file, so after running it: re-execute the notebooks
(``tools/execute_notebooks.py``), regenerate the labs (``make labs``) and review the changed outputs.

    .venv/bin/python tools/make_reference_model.py           # refuses to replace an existing file
    .venv/bin/python tools/make_reference_model.py --force   # replace it (the old one is backed up)
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import deploykit as dk  # noqa: E402
import torch  # noqa: E402
from deploykit import models  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="replace the shipped checkpoint (a backup is kept)")
    args = parser.parse_args(argv)
    target = models.REFERENCE_CHECKPOINT
    if target.exists() and not args.force:
        print(f"{target.relative_to(ROOT)} exists; pass --force to replace it (a .bak copy is kept)")
        return 1
    result = dk.train_digits_model(retrain=True)
    if target.exists():
        shutil.copy2(target, target.with_suffix(".pth.bak"))
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.state_dict(), target)
    digest = models.file_sha256(target)
    source = Path(models.__file__)
    text, count = re.subn(r'REFERENCE_SHA256 = "[0-9a-f]{64}"', f'REFERENCE_SHA256 = "{digest}"', source.read_text())
    if count != 1:
        print(f"could not find REFERENCE_SHA256 in {source}; set it by hand to {digest}")
        return 1
    source.write_text(text)
    print(f"wrote {target.relative_to(ROOT)} ({target.stat().st_size / 1024:.0f} KiB), test accuracy "
          f"{result.test_accuracy:.4f}, sha256 {digest}")
    print("next: re-execute the notebooks, `make labs`, and review every changed output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
