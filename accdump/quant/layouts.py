"""Scale layouts of block-scaled GEMMs (shared/quant_formats.md §4.3): the 128x4 swizzle."""

from __future__ import annotations

import torch

from accdump.errors import OpInputError


def _pad_to(n: int, m: int) -> int:
    return -(-n // m) * m


def swizzle_128x4(scale: torch.Tensor) -> torch.Tensor:
    """Linear [R, C] scales in the 128x4 tiled layout: a flat buffer of pad128(R) * pad4(C)
    values, zero-padded; tile (rt, ct) at (rt * ceil(C/4) + ct) * 512, row r and column c of a
    tile at (r % 32) * 16 + (r // 32) * 4 + c."""
    if scale.dim() != 2:
        raise OpInputError(f"swizzle_128x4: scale must be 2-D, got shape {list(scale.shape)}")
    rows, cols = scale.shape
    rp, cp = _pad_to(rows, 128), _pad_to(cols, 4)
    padded = scale.new_zeros((rp, cp))
    padded[:rows, :cols] = scale
    # [rt, quarter, r32, ct, c4] -> [rt, ct, r32, quarter, c4]
    tiles = padded.view(rp // 128, 4, 32, cp // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.contiguous().view(-1)


def unswizzle_128x4(buffer: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The linear [rows, cols] scales held by a 128x4-swizzled buffer (any shape or view of it:
    flat, [pad128(R), pad4(C)], or int32 words holding 4 scale bytes each)."""
    rp, cp = _pad_to(rows, 128), _pad_to(cols, 4)
    flat = buffer.contiguous().view(-1)
    if flat.dtype == torch.int32:
        flat = flat.view(torch.uint8)
    if flat.numel() < rp * cp:
        raise OpInputError(
            f"unswizzle_128x4: a buffer of {flat.numel()} scales cannot hold {rows} x {cols} "
            f"in 128x4 tiles (needs {rp * cp})"
        )
    tiles = flat[: rp * cp].view(rp // 128, cp // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.contiguous().view(rp, cp)[:rows, :cols]
