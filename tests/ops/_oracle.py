"""Float64 NumPy oracles, written independently of accdump.reference."""

from __future__ import annotations

import numpy as np
import torch

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
E2M1_TABLE = np.array(E2M1 + [-v for v in E2M1])


def values(x: torch.Tensor) -> np.ndarray:
    """Flat float64 values of x in logical order (packed float4 low nibble first)."""
    x = x.detach().cpu()
    if x.dtype == getattr(torch, "float4_e2m1fn_x2", None):
        b = x.contiguous().view(torch.uint8).numpy().astype(np.int64).reshape(-1)
        return np.stack([E2M1_TABLE[b & 0xF], E2M1_TABLE[b >> 4]], axis=-1).reshape(-1)
    return x.contiguous().to(torch.float64).numpy().reshape(-1)


def stats(x: torch.Tensor) -> dict[str, float]:
    v = values(x)
    f = v[np.isfinite(v)]
    nz = np.abs(f[f != 0])
    nan = float("nan")
    return {
        "count": v.size,
        "nan": int(np.isnan(v).sum()),
        "posinf": int((v == np.inf).sum()),
        "neginf": int((v == -np.inf).sum()),
        "zeros": int((f == 0).sum()),
        "min": f.min() if f.size else nan,
        "max": f.max() if f.size else nan,
        "sum": float(np.sum(f)),
        "mean": f.mean() if f.size else nan,
        "std": f.std() if f.size else nan,
        "absmax": np.abs(f).max() if f.size else nan,
        "l2norm": float(np.sqrt(np.sum(f * f))),
        "min_abs_nonzero": nz.min() if nz.size else nan,
    }
