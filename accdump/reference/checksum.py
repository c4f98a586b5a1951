"""Reference twin of the native fletcher32: libhdf5's Fletcher-32 computed with NumPy."""

from __future__ import annotations

import torch

from accdump.store.fletcher import fletcher32 as _fletcher32_numpy


def fletcher32(data: torch.Tensor) -> int:
    """libhdf5's Fletcher-32 of a contiguous 1-D uint8 CPU tensor."""
    if data.dtype != torch.uint8 or data.dim() != 1 or not data.is_contiguous() or data.device.type != "cpu":
        raise ValueError("fletcher32: data must be a contiguous 1-D uint8 CPU tensor")
    return _fletcher32_numpy(data.numpy().tobytes())
