"""Reference compare_metrics and rowwise_metrics, in float64."""

from __future__ import annotations

import math

import torch

METRICS_WIDTH = 14


def compare_metrics(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float, eps: float) -> torch.Tensor:
    """float64[14]; see accdump.ops.PairMetrics for the fields."""
    x = a.detach().to(torch.float64).reshape(-1)
    y = b.detach().to(torch.float64).reshape(-1)
    xn, yn = torch.isnan(x), torch.isnan(y)
    xi, yi = torch.isinf(x), torch.isinf(y)
    fin = torch.isfinite(x) & torch.isfinite(y)
    xf, yf = x[fin], y[fin]
    d = (xf - yf).abs()
    out = torch.zeros(METRICS_WIDTH, dtype=torch.float64, device=a.device)
    out[0] = x.numel()
    out[1] = (xf * yf).sum()
    out[2] = xf.square().sum()
    out[3] = yf.square().sum()
    if d.numel():
        m = d.max()
        out[4] = m
        out[5] = torch.nonzero(fin).reshape(-1)[torch.nonzero(d == m)[0, 0]]
        out[8] = (d / xf.abs().clamp_min(eps)).max()
    else:
        out[5] = -1
    out[6] = d.sum()
    out[7] = d.square().sum()
    same_nonfinite = (xn & yn) | (~fin & (x == y))
    fail_finite = d > atol + rtol * yf.abs()
    out[9] = fail_finite.sum() + (~fin & ~same_nonfinite).sum()
    out[10] = (xn != yn).sum()
    out[11] = ((xi != yi) | (xi & yi & (x != y))).sum()
    out[12] = (~fin).sum()
    out[13] = ((x != y) & ~(xn & yn)).sum()
    return out


def rowwise_metrics(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64[R, 3] over the last dimension: cosine, max|a-b|, ||a-b||/||a||."""
    last = a.shape[-1] if a.dim() else 1
    rows = math.prod(a.shape[:-1])
    x = a.detach().to(torch.float64).reshape(rows, last)
    y = b.detach().to(torch.float64).reshape(rows, last)
    sa = x.square().sum(-1)
    sb = y.square().sum(-1)
    dot = (x * y).sum(-1)
    sd = (x - y).square().sum(-1)
    cos = (dot / (sa.sqrt() * sb.sqrt())).clamp(-1, 1)
    cos = torch.where((sa == 0) | (sb == 0), torch.where((sa == 0) & (sb == 0), 1.0, 0.0), cos)
    cos = torch.where(torch.isnan(dot + sa + sb), math.nan, cos)
    if last:
        maxd = (x - y).abs().amax(-1)
        maxd = torch.where(torch.isnan(x - y).any(-1), math.nan, maxd)
    else:
        maxd = torch.zeros(x.shape[0], dtype=torch.float64, device=a.device)
    rel = torch.where(sa == 0, torch.where(sd == 0, 0.0, math.inf), sd.sqrt() / sa.sqrt())
    rel = torch.where(torch.isnan(sd + sa), math.nan, rel)
    return torch.stack([cos, maxd, rel], dim=-1)
