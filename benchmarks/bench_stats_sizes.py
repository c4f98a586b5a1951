"""Device time of one statistics launch (tensor_stats_into, the recorder's kernel) by tensor size.

A recorded forward launches one statistics kernel per new tensor, mostly of a few MB to a few
tens of MB; this measures each launch's device time (torch.profiler, kernels only: the host's
launch cost is not in it) on distinct tensors (rotated so that the total exceeds the L2 cache),
against torch.amax on the same tensors (one read, one reduction) in the same run.

    python benchmarks/bench_stats_sizes.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from profile_kernels import kernel_events  # noqa: E402

from accdump import ops  # noqa: E402
from accdump.store.schema import STATS_FIELDS  # noqa: E402

SIZES_MB = (0.25, 2, 8, 22, 46, 256, 1024)


def device_us(fn, tensors: list[torch.Tensor], calls: int, match: str) -> float:
    """Median device time (µs) of the kernels whose name contains `match`, one call per tensor."""
    for t in tensors[:2]:
        fn(t)
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for i in range(calls):
            fn(tensors[i % len(tensors)])
        torch.cuda.synchronize()
    durations = [d for name, _, d in kernel_events(prof) if match in name]
    # a call may be several kernels (amax: reduce + finish): sum them per call
    per_call = len(durations) // calls
    sums = [sum(durations[i * per_call : (i + 1) * per_call]) for i in range(calls)]
    return statistics.median(sums)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--json", default="bench_stats_sizes.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_stats_sizes needs a CUDA device")
    dtype = getattr(torch, args.dtype)
    out = torch.zeros(64, len(STATS_FIELDS), dtype=torch.float64, device="cuda")
    rows = []
    for mb in SIZES_MB:
        numel = int(mb * 2**20) // dtype.itemsize
        copies = max(1, min(16, int(200 // mb) + 1))
        tensors = [(torch.randn(numel, device="cuda") * 3 + 1).to(dtype) for _ in range(copies)]
        stats = device_us(lambda t: ops.tensor_stats_into(t, out, 0), tensors, args.calls, "stats")
        amax = device_us(lambda t: torch.amax(t), tensors, args.calls, "")
        nbytes = numel * dtype.itemsize
        rows.append({"mb": mb, "stats_us": stats, "amax_us": amax, "stats_gbs": nbytes / stats / 1e3})
        del tensors
    table = Table(title=f"one statistics launch, {args.dtype}, device time (median of {args.calls})")
    for col in ("MB", "stats µs", "GB/s", "amax µs", "× amax"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['mb']:g}",
            f"{r['stats_us']:.2f}",
            f"{r['stats_gbs']:.0f}",
            f"{r['amax_us']:.2f}",
            f"{r['stats_us'] / r['amax_us']:.2f}",
        )
    Console().print(table)
    Path(args.json).write_text(json.dumps({"dtype": args.dtype, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
