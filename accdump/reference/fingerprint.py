"""Reference fingerprint: the same function as the native tensor_fingerprint_into, in torch ops."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Odd 64-bit multipliers (as signed int64) for the two lanes; csrc/stats.h holds the same.
_M = [(-7046029254386353131, -4658895280553007687), (-3335678366873096957, 5573318704289380223)]
_GOLDEN = -7046029254386353131


def fingerprint(t: torch.Tensor) -> torch.Tensor:
    """int64[2]: a position-dependent mix of the tensor's bytes in logical order (so two tensors
    with equal values hash equal whatever their strides), summed with wrap-around."""
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
    pad = (-raw.numel()) % 8
    if pad:
        raw = torch.cat([raw, raw.new_zeros(pad)])
    words = raw.view(torch.int64)
    idx = torch.arange(words.numel(), device=words.device, dtype=torch.int64)
    lanes = []
    for m1, m2 in _M:
        x = words ^ (idx * _GOLDEN + m1)
        x = x * m2
        x = x ^ (x >> 29)
        x = x * m1
        lanes.append(x.sum() + t.numel())
    return torch.stack(lanes)


def tensor_fingerprint_into(x: torch.Tensor, out: torch.Tensor, row: int) -> None:
    """Writes fingerprint(x) into out[row] (int64 [R, 2])."""
    out[row] = fingerprint(x).to(out.device)


def tensor_fingerprint_multi_into(xs: Sequence[torch.Tensor], out: torch.Tensor, rows: Sequence[int]) -> None:
    """tensor_fingerprint_into of each xs[i] into out[rows[i]]."""
    for x, row in zip(xs, rows, strict=True):
        tensor_fingerprint_into(x, out, row)
