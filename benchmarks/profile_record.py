"""Where recording time goes on the GPU preset of bench_record: Python (cProfile, main thread)
and device kernels (torch.profiler)."""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_record import PRESETS, build_model  # noqa: E402

import accdump  # noqa: E402

p = PRESETS["gpu" if torch.cuda.is_available() else "cpu"]
model = build_model(p)
ids = torch.randint(0, p["vocab"], (1, p["seq"]), device=p["device"])
out = Path(tempfile.mkdtemp())
with torch.no_grad(), accdump.record(model, out / "d") as rec:
    for _ in range(3):
        model(ids)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5):
        model(ids)
    prof.disable()
    torch.cuda.synchronize()
    print(f"recorded forward: {(time.perf_counter() - t0) / 5 * 1e3:.1f} ms (under cProfile)")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as tp:
        model(ids)
        torch.cuda.synchronize()
pstats.Stats(prof).sort_stats("tottime").print_stats(18)
print(tp.key_averages().table(sort_by="cuda_time_total", row_limit=12))
