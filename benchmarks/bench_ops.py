"""Throughput of accdump's native ops against PyTorch eager and torch.compile doing the same work.

Prints a table and writes JSON: op, size, time, GB/s, % of the device's read bandwidth
(measured in the same run), and the baselines' times.

    python benchmarks/bench_ops.py [--device cuda] [--max-mb 1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from accdump import ops, reference


def timer(device: str, fn: Callable[[], object], reps: int) -> float:
    """Median seconds of fn() over `reps` runs after warm-up."""
    for _ in range(3):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reps_for(nbytes: int) -> int:
    return max(5, min(200, int(2e9 / max(nbytes, 1))))


def read_bandwidth(device: str, nbytes: int) -> float:
    """Bytes/s of a plain read-only reduction (amax over float32) of `nbytes`."""
    x = torch.randn(nbytes // 4, device=device)
    t = timer(device, lambda: torch.amax(x), reps_for(nbytes))
    return nbytes / t


def eager_stats(x: torch.Tensor) -> torch.Tensor:
    """What a user writes with torch ops: float32 statistics (no NaN/Inf exclusion, so less work)."""
    f = x.float()
    return torch.stack(
        [
            f.amin(),
            f.amax(),
            f.sum(),
            f.mean(),
            f.std(),
            f.abs().amax(),
            torch.linalg.vector_norm(f),
            torch.isnan(f).sum().float(),
            torch.isinf(f).sum().float(),
        ]
    )


def eager_metrics(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise metrics with torch ops in float32."""
    x, y = a.float(), b.float()
    d = x - y
    return torch.stack(
        [
            (x * y).sum(),
            (x * x).sum(),
            (y * y).sum(),
            d.abs().amax(),
            d.abs().argmax().float(),
            d.abs().sum(),
            (d * d).sum(),
            (d.abs() > 1e-3 + 1e-3 * y.abs()).sum().float(),
        ]
    )


def eager_rowwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    x, y = a.float(), b.float()
    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
    d = x - y
    return torch.stack(
        [cos, d.abs().amax(-1), torch.linalg.vector_norm(d, dim=-1) / torch.linalg.vector_norm(x, dim=-1)], -1
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--max-mb", type=float, default=None, help="largest tensor (default 1024 on CUDA, 64 on CPU)"
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--json", default="bench_ops.json")
    args = p.parse_args()
    dev = args.device
    max_mb = args.max_mb or (1024 if dev == "cuda" else 64)
    native = ops.native_available(dev)
    backend = "native" if native else "reference"
    compiled_stats = torch.compile(eager_stats) if not args.no_compile else None
    compiled_metrics = torch.compile(eager_metrics) if not args.no_compile else None
    compiled_rowwise = torch.compile(eager_rowwise) if not args.no_compile else None
    bw = read_bandwidth(dev, int(min(max_mb, 1024) * 2**20))
    rows: list[dict] = []

    def add(op: str, size: str, nbytes: int, ours: float, eager: float, comp: float | None) -> None:
        rows.append(
            {
                "op": op,
                "size": size,
                "bytes": nbytes,
                "time_us": ours * 1e6,
                "gbps": nbytes / ours / 1e9,
                "pct_read_bw": 100 * nbytes / ours / bw,
                "eager_us": eager * 1e6,
                "compile_us": comp * 1e6 if comp is not None else None,
                "speedup_vs_eager": eager / ours,
                "speedup_vs_compile": comp / ours if comp else None,
            }
        )

    gen = torch.Generator(device=dev).manual_seed(0)
    mb = 4 / 1024
    while mb <= max_mb + 1e-9:
        nbytes = int(mb * 2**20)
        n = nbytes // 2
        x = torch.randn(n, device=dev, generator=gen).to(torch.bfloat16)
        y = (x.float() + 0.01 * torch.randn(n, device=dev, generator=gen)).to(torch.bfloat16)
        r = reps_for(nbytes)
        size = f"{mb:g} MB" if mb >= 1 else f"{mb * 1024:g} KB"
        add(
            "tensor_stats",
            size,
            nbytes,
            timer(dev, lambda: ops.tensor_stats_raw(x, backend), r),
            timer(dev, lambda: eager_stats(x), r),
            timer(dev, lambda: compiled_stats(x), r) if compiled_stats else None,
        )
        ws = ops.stats_workspace(dev)
        out = torch.zeros(1, len(ops.STATS_FIELDS), dtype=torch.float64, device=dev)
        add(
            "tensor_stats_into",
            size,
            nbytes,
            timer(dev, lambda: ops.tensor_stats_into(x, out, 0, ws, backend), r),
            timer(dev, lambda: eager_stats(x), r),
            timer(dev, lambda: compiled_stats(x), r) if compiled_stats else None,
        )
        fp_out = torch.zeros(1, 2, dtype=torch.int64, device=dev)
        add(
            "tensor_fingerprint_into",
            size,
            nbytes,
            timer(dev, lambda: ops.tensor_fingerprint_into(x, fp_out, 0, backend), r),
            timer(dev, lambda: eager_stats(x), r),
            None,
        )
        add(
            "compare_metrics",
            size,
            2 * nbytes,
            timer(dev, lambda: ops.compare_metrics_raw(x, y, 1e-3, 1e-3, backend=backend), r),
            timer(dev, lambda: eager_metrics(x, y), r),
            timer(dev, lambda: compiled_metrics(x, y), r) if compiled_metrics else None,
        )
        if n >= 4096:
            xr, yr = x.view(-1, 4096), y.view(-1, 4096)
            add(
                "rowwise_metrics",
                size,
                2 * nbytes,
                timer(dev, lambda: ops.rowwise_metrics_raw(xr, yr, backend), r),
                timer(dev, lambda: eager_rowwise(xr, yr), r),
                timer(dev, lambda: compiled_rowwise(xr, yr), r) if compiled_rowwise else None,
            )
        del x, y
        mb *= 16 if mb < 1 else 4
    # the checksum of a dump's heap chunks (host memory, one core), against its NumPy twin
    chunk = torch.randint(0, 256, (1 << 20,), dtype=torch.uint8)
    add(
        "fletcher32",
        "1 MB (host)",
        chunk.numel(),
        timer("cpu", lambda: torch.ops.accdump.fletcher32.default(chunk), 50)
        if ops.native_available("cpu")
        else float("nan"),
        timer("cpu", lambda: reference.fletcher32(chunk), 5),
        None,
    )
    small = [torch.randn(1, 4096, device=dev, generator=gen).to(torch.bfloat16) for _ in range(512)]
    nbytes = 512 * 4096 * 2
    add(
        "tensor_stats_multi",
        "512 x [1,4096]",
        nbytes,
        timer(dev, lambda: ops.tensor_stats_multi_raw(small, backend), 50),
        timer(dev, lambda: [eager_stats(s) for s in small], 10),
        timer(dev, lambda: [compiled_stats(s) for s in small], 10) if compiled_stats else None,
    )
    ws = ops.stats_workspace(dev)
    rows_out = torch.zeros(len(small), len(ops.STATS_FIELDS), dtype=torch.float64, device=dev)
    row_index = list(range(len(small)))
    rows_src = small
    fp_rows = torch.zeros(len(small), 2, dtype=torch.int64, device=dev)
    add(
        "tensor_fingerprint_multi_into",
        "512 x [1,4096]",
        nbytes,
        timer(dev, lambda: ops.tensor_fingerprint_multi_into(small, fp_rows, row_index, backend), 50),
        timer(
            dev,
            lambda: [ops.tensor_fingerprint_into(s, fp_rows, i, backend) for i, s in enumerate(rows_src)],
            10,
        ),
        None,
    )
    add(
        "tensor_stats_multi_into",
        "512 x [1,4096]",
        nbytes,
        timer(dev, lambda: ops.tensor_stats_multi_into(small, rows_out, row_index, ws, backend), 50),
        timer(
            dev,
            lambda: [ops.tensor_stats_into(s, rows_out, i, ws, backend) for i, s in enumerate(rows_src)],
            10,
        ),
        None,
    )

    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    table = Table(
        title=f"accdump ops on {name} ({backend}); read bandwidth {bw / 1e9:.0f} GB/s (amax over fp32)"
    )
    for col in (
        "op",
        "size",
        "time µs",
        "GB/s",
        "% read BW",
        "eager µs",
        "compile µs",
        "× eager",
        "× compile",
    ):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            row["op"],
            row["size"],
            f"{row['time_us']:.1f}",
            f"{row['gbps']:.1f}",
            f"{row['pct_read_bw']:.0f}",
            f"{row['eager_us']:.1f}",
            f"{row['compile_us']:.1f}" if row["compile_us"] else "-",
            f"{row['speedup_vs_eager']:.1f}",
            f"{row['speedup_vs_compile']:.1f}" if row["speedup_vs_compile"] else "-",
        )
    Console(width=160).print(table)
    with open(args.json, "w") as f:
        json.dump({"device": name, "backend": backend, "read_bw_gbps": bw / 1e9, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
