"""Do two runtimes give the same answer? Max abs/rel difference and top-1 agreement."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float | None  # fraction of rows with the same argmax (2-D outputs only)
    allclose: bool
    atol: float
    rtol: float
    shape: tuple

    def __str__(self) -> str:
        top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.2%}"
        return (
            f"shape {self.shape}: max |diff| {self.max_abs_diff:.2e}, max rel diff {self.max_rel_diff:.2e}, "
            f"top-1 agreement {top1}, allclose(atol={self.atol:g}, rtol={self.rtol:g}) = {self.allclose}"
        )


def _as_array(value, role: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)) and len(value) == 1 and hasattr(value[0], "shape"):
        raise ValueError(
            f"{role} expected an array, got a list holding one array: pass outputs[0] "
            "(InferenceSession.run returns a list)"
        )
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{role} expected a numeric array, got dtype {array.dtype}")
    return array


def parity_report(reference, candidate, *, atol: float = 1e-5, rtol: float = 1e-4) -> ParityReport:
    """Compare ``candidate`` (e.g. ONNX Runtime output) with ``reference`` (e.g. PyTorch eager).

    Both must have the same shape. Float outputs are compared in float64; ``allclose`` uses
    ``|candidate - reference| <= atol + rtol * |reference|`` elementwise.
    """
    ref = _as_array(reference, "reference")
    cand = _as_array(candidate, "candidate")
    if ref.shape != cand.shape:
        raise ValueError(f"candidate shape {cand.shape} does not match reference shape {ref.shape}; expected equal shapes")
    if ref.size == 0:
        raise ValueError("parity_report expected non-empty arrays")
    ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
    diff = np.abs(cand64 - ref64)
    rel = diff / np.maximum(np.abs(ref64), 1e-12)
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean())
    return ParityReport(
        max_abs_diff=float(diff.max()),
        max_rel_diff=float(rel.max()),
        top1_agreement=top1,
        allclose=bool(np.all(diff <= atol + rtol * np.abs(ref64))),
        atol=atol,
        rtol=rtol,
        shape=tuple(ref.shape),
    )
