"""Pure-PyTorch twins of block_dequantize and block_scaled_linear (shared/quant_formats.md)."""

from __future__ import annotations

import torch

from accdump.reference.decode import E2M1_TABLE

_FLOAT8 = {
    "e4m3fn": "float8_e4m3fn",
    "e4m3fnuz": "float8_e4m3fnuz",
    "e5m2": "float8_e5m2",
    "e5m2fnuz": "float8_e5m2fnuz",
    "e8m0": "float8_e8m0fnu",
}
_DENSE = {"f64": torch.float64, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


_BYTE_FORMATS = ("e4m3fn", "e4m3fnuz", "e5m2", "e5m2fnuz", "e8m0", "e2m1", "u8", "i8")


def format_of(t: torch.Tensor, name: str, arg: str, op: str) -> str:
    """The format `name` reads `t` with; "auto" takes it from the dtype."""
    if name != "auto":
        if name not in _BYTE_FORMATS and name not in _DENSE:
            raise RuntimeError(f"accdump.{op}: unknown format '{name}' for {arg}")
        size = _DENSE[name].itemsize if name in _DENSE else 1
        if t.element_size() != size:
            raise RuntimeError(
                f"accdump.{op}: {arg} holds {t.element_size()}-byte elements, which cannot be read as {name}"
            )
        return name
    for fmt, dtype_name in _FLOAT8.items():
        if t.dtype == getattr(torch, dtype_name, None):
            return fmt
    if t.dtype == getattr(torch, "float4_e2m1fn_x2", None):
        return "e2m1"
    for fmt, dtype in _DENSE.items():
        if t.dtype == dtype:
            return fmt
    raise RuntimeError(f"accdump.{op}: cannot tell how to read {arg} of dtype {t.dtype}; name its format")


def decode(t: torch.Tensor, fmt: str) -> torch.Tensor:
    """Values of `t` read as `fmt`, float64 (packed e2m1 doubles the last dimension)."""
    if fmt in _DENSE:
        return t.view(_DENSE[fmt]).to(torch.float64)
    b = t.contiguous().view(torch.uint8)
    if fmt == "e2m1":
        table = E2M1_TABLE.to(t.device)
        codes = torch.stack([b & 0xF, b >> 4], dim=-1).to(torch.int64)
        return table[codes].reshape(*b.shape[:-1], b.shape[-1] * 2)
    if fmt == "u8":
        return b.to(torch.float64)
    if fmt == "i8":
        return b.view(torch.int8).to(torch.float64)
    table = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(getattr(torch, _FLOAT8[fmt]))
    return table.to(torch.float64).to(t.device)[b.to(torch.int64)]


def _expand_scale(scale: torch.Tensor, fmt: str, rows: int, cols: int, br: int, bc: int) -> torch.Tensor:
    s = decode(scale, fmt)
    want = (-(-rows // br), -(-cols // bc))
    if tuple(s.shape) != want:
        raise RuntimeError(f"accdump.block_dequantize: scale has shape {list(s.shape)}, need {list(want)}")
    return s.repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]


def _operand(
    q: torch.Tensor, element: str, scale: torch.Tensor | None, scale_format: str, br: int, bc: int, op: str
) -> torch.Tensor:
    if q.dim() != 2:
        raise RuntimeError(f"accdump.{op}: q must be 2-D, got shape {list(q.shape)}")
    v = decode(q, format_of(q, element, "q", op))
    if scale is not None:
        fmt = format_of(scale, scale_format, "scale", op)
        v = v * _expand_scale(scale, fmt, v.shape[0], v.shape[1], br, bc)
    return v


def block_dequantize(
    q: torch.Tensor,
    element: str,
    scale: torch.Tensor | None,
    scale_format: str,
    block_rows: int,
    block_cols: int,
    global_scale: float,
) -> torch.Tensor:
    """float32 q(r, c) * scale[r // block_rows, c // block_cols] * global_scale."""
    v = _operand(q, element, scale, scale_format, block_rows, block_cols, "block_dequantize")
    return (v * global_scale).to(torch.float32)


def block_scaled_linear(
    x: torch.Tensor,
    x_element: str,
    x_scale: torch.Tensor | None,
    x_scale_format: str,
    x_block: int,
    w: torch.Tensor,
    w_element: str,
    w_scale: torch.Tensor | None,
    w_scale_format: str,
    w_block_rows: int,
    w_block_cols: int,
    global_scale: float,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """float32 global_scale * x @ w^T + bias, from operand values rounded to float32 (as the
    native kernels use them) multiplied and summed in float64."""
    op = "block_scaled_linear"
    xv = _operand(x, x_element, x_scale, x_scale_format, 1, x_block, op).to(torch.float32)
    wv = _operand(w, w_element, w_scale, w_scale_format, w_block_rows, w_block_cols, op).to(torch.float32)
    if xv.shape[1] != wv.shape[1]:
        raise RuntimeError(f"accdump.{op}: x has {xv.shape[1]} values per row but w has {wv.shape[1]}")
    y = (xv.double() @ wv.double().T) * global_scale
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != wv.shape[0]:
            raise RuntimeError(f"accdump.{op}: bias must have shape [{wv.shape[0]}], got {list(bias.shape)}")
        y = y + bias.double()
    return y.to(torch.float32)
