"""Torch dtypes by name, and tensors to and from raw bytes (bit-exact, any dtype)."""

from __future__ import annotations

import math

import numpy as np
import torch

from accdump.errors import DumpFormatError


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise DumpFormatError(f"unknown dtype {name!r} in dump (this torch {torch.__version__} lacks it?)")
    return dt


def tensor_to_bytes(t: torch.Tensor) -> np.ndarray:
    """The raw bytes of a contiguous CPU tensor as a uint8 NumPy array (no copy)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def tensor_from_bytes(raw: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor of `dtype` and `shape` whose bits are `raw` (uint8)."""
    if any(s < 0 for s in shape):
        raise DumpFormatError(f"negative dimension in the stored shape {list(shape)}")
    u8 = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.uint8))
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a damaged shape cannot overflow
    if u8.numel() != expected:
        raise DumpFormatError(
            f"stored tensor has {u8.numel()} bytes, expected {expected} for {dtype} {list(shape)}"
        )
    if u8.numel() == 0:
        return torch.empty(shape, dtype=dtype)
    return u8.view(dtype).reshape(shape)
