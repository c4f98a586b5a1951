"""The reference quantized linear and dequantization against PyTorch doing the same job
(dequantize to float32, then a float32 matmul with TF32 off), eager and torch.compile.

Shapes follow the quantized-MLP projections of large models (N x K = 7168 x 18432 and
18432 x 7168) for M in {1, 64, 2048}; formats FP8 128x128 block, NVFP4 and MXFP4. Also reports
each result's relative L2 error against a float64 matmul of the same exact operands, and the
dequantization's throughput as a fraction of the device's read bandwidth (measured here).

    python benchmarks/bench_quant.py [--device cuda] [--small] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_ops import read_bandwidth, timer
from rich.console import Console
from rich.table import Table

from accdump import ops
from accdump.quant import BlockQuantized, quantize_fp8_blocks, quantize_mx, quantize_nvfp4

_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def torch_dequant(w: BlockQuantized) -> torch.Tensor:
    """What a user writes in PyTorch: decode, expand the scales, multiply (float32)."""
    if w.element == "e2m1":
        table = torch.tensor(_E2M1 + [-v for v in _E2M1], device=w.q.device)
        b = w.q.long()
        vals = torch.stack([table[b & 0xF], table[b >> 4]], -1).reshape(w.q.shape[0], -1)
    else:
        vals = w.q.view(torch.float8_e4m3fn).float()
    s = w.scale
    assert s is not None
    if w.scale_format == "e8m0":
        s = torch.exp2(s.float() - 127)
    elif w.scale_format == "e4m3fn":
        s = s.view(torch.float8_e4m3fn).float()
    rows, cols = vals.shape
    full = s.repeat_interleave(w.block[0], 0)[:rows].repeat_interleave(w.block[1], 1)[:, :cols]
    return vals * full * w.global_scale


def torch_linear(x: torch.Tensor, w: BlockQuantized) -> torch.Tensor:
    return x.float() @ torch_dequant(w).T


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="small shapes (CPU smoke run)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json", default="bench_quant.json")
    args = p.parse_args()
    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backend = "native" if ops.native_available(dev) else "reference"
    shapes = [(512, 1024), (1024, 512)] if args.small else [(7168, 18432), (18432, 7168)]
    ms = [1, 16, 64] if args.small else [1, 64, 2048]
    compiled = torch.compile(torch_linear) if not args.no_compile else None
    bw = read_bandwidth(dev, 2**28 if dev == "cuda" else 2**24)
    gen = torch.Generator(device=dev).manual_seed(0)
    rows: list[dict] = []
    for n, k in shapes:
        w32 = torch.randn(n, k, device=dev, generator=gen) * 0.02
        weights = {
            "fp8 block": quantize_fp8_blocks(w32),
            "nvfp4": quantize_nvfp4(w32),
            "mxfp4": quantize_mx(w32),
        }
        del w32
        for fmt, w in weights.items():
            wbytes = w.q.numel() + (w.scale.numel() * w.scale.element_size() if w.scale is not None else 0)
            t_ours = timer(dev, lambda w=w: w.dequantize(), 20)
            t_torch = timer(dev, lambda w=w: torch_dequant(w), 20)
            out_bytes = n * k * 4
            rows.append({"kind": "block_dequantize", "format": fmt, "n": n, "k": k, "m": None,
                         "ours_ms": t_ours * 1e3, "eager_ms": t_torch * 1e3, "compile_ms": None,
                         "gbps": (wbytes + out_bytes) / t_ours / 1e9,
                         "pct_bw": 100 * (wbytes + out_bytes) / t_ours / bw})  # fmt: skip
            wd = w.dequantize().double()
            for m in ms:
                x = torch.randn(m, k, device=dev, generator=gen).to(torch.bfloat16)
                run = lambda x=x, w=w: ops.block_scaled_linear(  # noqa: E731
                    x, w.q, w_element=w.element, w_scale=w.scale, w_scale_format=w.scale_format,
                    w_block=w.block, global_scale=w.global_scale, backend=backend)  # fmt: skip
                reps = 5 if m >= 2048 else 20
                t = timer(dev, run, reps)
                te = timer(dev, lambda x=x, w=w: torch_linear(x, w), reps)
                tc = timer(dev, lambda x=x, w=w: compiled(x, w), reps) if compiled else None
                ref = x.double() @ wd.T
                rows.append({"kind": "block_scaled_linear", "format": fmt, "n": n, "k": k, "m": m,
                             "ours_ms": t * 1e3, "eager_ms": te * 1e3, "compile_ms": tc * 1e3 if tc else None,
                             "tflops": 2 * m * n * k / t / 1e12, "err_ours": rel_err(run(), ref),
                             "err_torch": rel_err(torch_linear(x, w), ref)})  # fmt: skip
                del ref
            del wd
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    table = Table(title=f"quantized reference ops on {name} ({backend}); read bandwidth {bw / 1e9:.0f} GB/s")
    for col in ("op", "format", "N x K", "M", "ours ms", "eager ms", "compile ms", "× eager", "× compile",
                "TFLOP/s | % BW", "rel err ours", "rel err torch fp32"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["kind"], r["format"], f"{r['n']}x{r['k']}", str(r["m"] or "-"), f"{r['ours_ms']:.3f}",
            f"{r['eager_ms']:.3f}", f"{r['compile_ms']:.3f}" if r["compile_ms"] else "-",
            f"{r['eager_ms'] / r['ours_ms']:.2f}",
            f"{r['compile_ms'] / r['ours_ms']:.2f}" if r["compile_ms"] else "-",
            f"{r['tflops']:.1f}" if r["kind"] == "block_scaled_linear" else f"{r['pct_bw']:.0f}%",
            f"{r['err_ours']:.1e}" if "err_ours" in r else "-",
            f"{r['err_torch']:.1e}" if "err_torch" in r else "-",
        )  # fmt: skip
    Console(width=200).print(table)
    with open(args.json, "w") as f:
        json.dump({"device": name, "backend": backend, "read_bw_gbps": bw / 1e9, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
