"""Time `accdump compare` on two full-tensor dumps (default 2 x 512 MB) against reading the same
files: the comparison should run at the speed of reading the dumps.

    python benchmarks/bench_compare.py [--mb-per-dump 512] [--device cuda] [--repeat 3] [--cold]

Two baselines: every tensor heap read through h5py (checksums included) into one reused buffer,
and every byte of the files read with plain reads (the disk's or the page cache's own speed).
Both timings see the same page cache: the files were just written (fsynced, so clean) and are read
once untimed first, so both read from memory; with --cold each timed pass first drops the files
from the page cache (posix_fadvise DONTNEED), so both read from the disk. Reads and comparisons
alternate, `--repeat` times; the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

import accdump


def read_all(files: list[Path], chunk_bytes: int = 32 << 20) -> None:
    """Reads every tensor heap through h5py, piece by piece into one reused buffer as compare does
    (a fresh array per file would time page faults of newly mapped memory, which vary run to run)."""
    buf = np.empty(chunk_bytes, dtype=np.uint8)
    for p in files:
        with h5py.File(p, "r") as f:
            heap = f["heap"]
            size = heap.shape[0]
            for start in range(0, size, chunk_bytes):
                n = min(chunk_bytes, size - start)
                heap.read_direct(buf, np.s_[start : start + n], np.s_[0:n])


def read_raw(files: list[Path], chunk_bytes: int = 32 << 20) -> None:
    """Reads every byte of the files with plain reads into one reused buffer: the speed of the
    disk (or of the page cache), with no format and no checksum."""
    buf = memoryview(np.empty(chunk_bytes, dtype=np.uint8))
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            while os.readv(fd, [buf]):
                pass
        finally:
            os.close(fd)


def evict(files: list[Path]) -> None:
    """Drops the files' (clean) pages from the page cache."""
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb-per-dump", type=int, default=512)
    ap.add_argument("--tensor-mb", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3, help="timed (read, compare) rounds; medians")
    ap.add_argument("--cold", action="store_true", help="read both from the disk, not the page cache")
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
    read_all(files)  # untimed: the same (warm) cache and allocator state for both timings
    reads, raws, compares = [], [], []
    for _ in range(args.repeat):
        if args.cold:
            evict(files)
        t0 = time.perf_counter()
        read_raw(files)
        raws.append(time.perf_counter() - t0)
        if args.cold:
            evict(files)
        t0 = time.perf_counter()
        read_all(files)
        reads.append(time.perf_counter() - t0)
        if args.cold:
            evict(files)
        t0 = time.perf_counter()
        result = accdump.compare(tmp / "golden", tmp / "target", device=args.device)
        compares.append(time.perf_counter() - t0)
    read_s, compare_s = statistics.median(reads), statistics.median(compares)
    raw_s = statistics.median(raws)
    row = {
        "bytes": nbytes,
        "tensors_per_dump": n,
        "device": args.device,
        "cache": "cold" if args.cold else "warm",
        "read_s_all": reads,
        "compare_s_all": compares,
        "read_s": read_s,
        "read_gbps": nbytes / read_s / 1e9,
        "compare_s": compare_s,
        "compare_gbps": nbytes / compare_s / 1e9,
        "compare_over_read": compare_s / read_s,
        "raw_read_s_all": raws,
        "raw_read_s": raw_s,
        "raw_read_gbps": nbytes / raw_s / 1e9,
        "compare_over_raw_read": compare_s / raw_s,
        "pairs": len(result.pairs),
    }
    print(
        f"compare of 2 x {args.mb_per_dump} MB ({n} tensors each, {row['cache']} cache) on {args.device}: "
        f"median of {args.repeat}: {compare_s:.2f} s "
        f"({row['compare_gbps']:.2f} GB/s); reading the same heaps with h5py: {read_s:.2f} s "
        f"({row['read_gbps']:.2f} GB/s); ratio {row['compare_over_read']:.2f}; plain reads of the files: "
        f"{raw_s:.2f} s ({row['raw_read_gbps']:.2f} GB/s), ratio {row['compare_over_raw_read']:.2f}"
    )
    Path(args.json).write_text(json.dumps(row, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
