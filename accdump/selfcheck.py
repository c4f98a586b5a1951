"""A self-check of the build: runs every op on random data with each available backend and
compares it with the float64 reference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from accdump import ops, reference


@dataclass
class CheckRow:
    op: str
    device: str
    dtype: str
    backend: str
    max_rel_err: float
    ok: bool


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    both_nan = torch.isnan(got) & torch.isnan(want)
    diff = (got - want).abs() / want.abs().clamp_min(1e-300)
    diff = torch.where(both_nan | (got == want), 0.0, diff)
    return float(diff.max()) if diff.numel() else 0.0


def run_selfcheck(seed: int = 0) -> list[CheckRow]:
    """Runs each op on random data on every device present; returns one row per check."""
    gen = torch.Generator().manual_seed(seed)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows: list[CheckRow] = []
    for device in devices:
        backend = "native" if ops.native_available(device) else "reference"
        for dtype in (torch.float32, torch.bfloat16, torch.float8_e4m3fn):
            base = torch.randn(64, 257, generator=gen) * 3
            x = base.to(dtype).to(device)
            y = (base + 0.01 * torch.randn(64, 257, generator=gen)).to(dtype).to(device)
            checks = [
                ("tensor_stats", ops.tensor_stats_raw(x), reference.tensor_stats(x.cpu())),
                (
                    "tensor_stats_multi",
                    ops.tensor_stats_multi_raw([x, y[:, 3:]]),
                    reference.tensor_stats_multi([x.cpu(), y[:, 3:].cpu()]),
                ),
                (
                    "compare_metrics",
                    ops.compare_metrics_raw(x, y, 1e-3, 1e-2),
                    reference.compare_metrics(x.cpu(), y.cpu(), 1e-3, 1e-2, ops.DEFAULT_EPS),
                ),
                (
                    "rowwise_metrics",
                    ops.rowwise_metrics_raw(x.t(), y.t()),
                    reference.rowwise_metrics(x.t().cpu(), y.t().cpu()),
                ),
            ]
            into = torch.zeros(1, len(ops.STATS_FIELDS), dtype=torch.float64, device=device)
            ops.tensor_stats_into(x, into, 0)
            checks.append(("tensor_stats_into", into[0], reference.tensor_stats(x.cpu())))
            multi = torch.zeros(3, len(ops.STATS_FIELDS), dtype=torch.float64, device=device)
            ops.tensor_stats_multi_into([x, y[:, 3:]], multi, [2, 0])
            want = reference.tensor_stats_multi([y[:, 3:].cpu(), x.cpu()])
            checks.append(("tensor_stats_multi_into", multi[[0, 2]], want))
            fp = torch.zeros(1, 2, dtype=torch.int64, device=device)
            ops.tensor_fingerprint_into(x.t(), fp, 0)
            same = torch.equal(fp[0].cpu(), reference.fingerprint(x.t().cpu()))
            checks.append(("tensor_fingerprint_into", torch.tensor([float(not same)]), torch.zeros(1)))
            fps = torch.zeros(3, 2, dtype=torch.int64, device=device)
            ops.tensor_fingerprint_multi_into([x.t(), y], fps, [2, 0])
            want_fp = torch.stack([reference.fingerprint(y.cpu()), reference.fingerprint(x.t().cpu())])
            same = torch.equal(fps[[0, 2]].cpu(), want_fp)
            checks.append(("tensor_fingerprint_multi_into", torch.tensor([float(not same)]), torch.zeros(1)))
            for name, got, want in checks:
                err = _rel_err(got, want)
                rows.append(
                    CheckRow(
                        name,
                        device,
                        str(dtype).replace("torch.", ""),
                        backend,
                        err,
                        not math.isnan(err) and err < 1e-9,
                    )
                )
        rows += _quant_checks(device, backend, gen)
    return rows


def _quant_checks(device: str, backend: str, gen: torch.Generator) -> list[CheckRow]:
    """block_dequantize exactly, block_scaled_linear to 1e-6 relative L2, against the reference."""
    from accdump.quant import quantize_fp8_blocks, quantize_nvfp4, reference_linear

    w32 = torch.randn(136, 272, generator=gen) * 0.05
    x = torch.randn(24, 272, generator=gen).to(torch.bfloat16)
    rows = []
    for fmt, w in (("fp8 block", quantize_fp8_blocks(w32)), ("nvfp4", quantize_nvfp4(w32))):
        args = (w.q, w.element, w.scale, w.scale_format, w.block[0], w.block[1], w.global_scale)
        wd = w.to(device)
        err = _rel_err(wd.dequantize(), reference.block_dequantize(*args))
        rows.append(CheckRow("block_dequantize", device, fmt, backend, err, err == 0.0))
        want = reference.block_scaled_linear(x, "auto", None, "auto", 1, *args, None).double()
        got = reference_linear(x.to(device), wd).double().cpu()
        rel = float((got - want).norm() / want.norm())
        rows.append(CheckRow("block_scaled_linear", device, fmt, backend, rel, rel < 1e-6))
    return rows
