"""Time `accdump compare` on two full-tensor dumps (default 2 x 512 MB) against reading the same
files: the comparison should run at the speed of reading the dumps.

    python benchmarks/bench_compare.py [--mb-per-dump 512] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import torch

import accdump


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb-per-dump", type=int, default=512)
    ap.add_argument("--tensor-mb", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default="bench_compare.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="accdump-bench-compare-"))
    n = args.mb_per_dump // args.tensor_mb
    numel = args.tensor_mb * 2**20 // 4
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(numel, generator=gen) for _ in range(4)]
    for label, noise in (("golden", 0.0), ("target", 1e-3)):
        with accdump.record(None, tmp / label, mode="tensor"):
            for i in range(n):
                x = base[i % 4] * (1 + i / n)
                accdump.probe(f"t{i}", x + noise * base[(i + 1) % 4])
    files = [p for d in ("golden", "target") for p in sorted((tmp / d).glob("rank*/seg*.h5"))]
    nbytes = sum(p.stat().st_size for p in files)
    t0 = time.perf_counter()
    for p in files:
        with h5py.File(p, "r") as f:
            f["heap"][...]
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = accdump.compare(tmp / "golden", tmp / "target", device=args.device)
    compare_s = time.perf_counter() - t0
    row = {
        "bytes": nbytes,
        "tensors_per_dump": n,
        "device": args.device,
        "read_s": read_s,
        "read_gbps": nbytes / read_s / 1e9,
        "compare_s": compare_s,
        "compare_gbps": nbytes / compare_s / 1e9,
        "compare_over_read": compare_s / read_s,
        "pairs": len(result.pairs),
    }
    print(
        f"compare of 2 x {args.mb_per_dump} MB ({n} tensors each) on {args.device}: {compare_s:.2f} s "
        f"({row['compare_gbps']:.2f} GB/s); reading the same files with h5py: {read_s:.2f} s "
        f"({row['read_gbps']:.2f} GB/s); ratio {row['compare_over_read']:.2f}"
    )
    Path(args.json).write_text(json.dumps(row, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
