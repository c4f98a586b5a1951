"""Reference tensor_stats: float64, two passes, NaN/Inf counted and excluded."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from accdump.reference.decode import to_float64

STATS_WIDTH = 13


def tensor_stats(x: torch.Tensor) -> torch.Tensor:
    """float64[13]: count, nan, +inf, -inf, zeros, min, max, sum, mean, std, absmax, l2, min|x|!=0."""
    v = to_float64(x.detach()).reshape(-1)
    nan = torch.isnan(v)
    pinf = v == math.inf
    ninf = v == -math.inf
    f = v[torch.isfinite(v)]
    out = torch.full((STATS_WIDTH,), math.nan, dtype=torch.float64, device=x.device)
    out[0] = v.numel()
    out[1] = nan.sum()
    out[2] = pinf.sum()
    out[3] = ninf.sum()
    out[4] = (f == 0).sum()
    out[7] = f.sum()
    out[11] = f.square().sum().sqrt()
    if f.numel():
        mean = f.mean()
        out[5] = f.min()
        out[6] = f.max()
        out[8] = mean
        out[9] = (f - mean).square().mean().sqrt()
        out[10] = f.abs().max()
        nz = f[f != 0].abs()
        if nz.numel():
            out[12] = nz.min()
    return out


def tensor_stats_multi(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """float64[N, 13]: tensor_stats of each tensor."""
    if not xs:
        return torch.empty((0, STATS_WIDTH), dtype=torch.float64)
    return torch.stack([tensor_stats(x) for x in xs])


def tensor_stats_multi_into(
    xs: Sequence[torch.Tensor], out: torch.Tensor, rows: Sequence[int], workspace: torch.Tensor | None = None
) -> None:
    """tensor_stats_into of each xs[i] into out[rows[i]]."""
    for x, row in zip(xs, rows, strict=True):
        tensor_stats_into(x, out, row, workspace)


def tensor_stats_into(
    x: torch.Tensor, out: torch.Tensor, row: int, workspace: torch.Tensor | None = None
) -> None:
    """Writes tensor_stats(x) into out[row] (the workspace is only used by the native kernel)."""
    out[row] = tensor_stats(x).to(out.device)
