"""Exact conversion of any supported tensor to float64 values."""

from __future__ import annotations

import torch

FLOAT4 = getattr(torch, "float4_e2m1fn_x2", None)

# E2M1 code -> value (shared/quant_formats.md: bit 3 sign, 2 exponent bits, 1 mantissa bit).
_E2M1_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
E2M1_TABLE = torch.tensor(_E2M1_VALUES + [-v for v in _E2M1_VALUES], dtype=torch.float64)


def unpack_float4(x: torch.Tensor) -> torch.Tensor:
    """Values of a packed float4_e2m1fn_x2 tensor: shape [..., 2*last], element 2i from the low nibble."""
    b = x.view(torch.uint8).to(torch.int64)
    table = E2M1_TABLE.to(x.device)
    pair = torch.stack([table[b & 0xF], table[b >> 4]], dim=-1)
    return pair.reshape(*x.shape[:-1], x.shape[-1] * 2) if x.dim() else pair.reshape(2)


def to_float64(x: torch.Tensor) -> torch.Tensor:
    """`x` as float64, value for value (packed float4 doubles its last dimension)."""
    if FLOAT4 is not None and x.dtype == FLOAT4:
        return unpack_float4(x)
    return x.to(torch.float64)
