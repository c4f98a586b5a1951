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


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


with torch.no_grad(), accdump.record(model, out / "d") as rec:
    for _ in range(3):
        model(ids)
    sync()
    t0 = time.perf_counter()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5):
        model(ids)
    prof.disable()
    sync()
    print(f"recorded forward: {(time.perf_counter() - t0) / 5 * 1e3:.1f} ms (under cProfile)")
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else []
    )
    with torch.profiler.profile(activities=acts) as tp:
        model(ids)
        sync()
pstats.Stats(prof).sort_stats("tottime").print_stats(18)
pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
w = rec._writer
print(
    f"writer: {w.seconds_writing:.3f} s writing (fsync {w._writer.seconds_fsync:.3f} s), "
    f"{w.seconds_stalled:.3f} s caller stalled, {len(w.steps_written)} steps"
)
key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
print(tp.key_averages().table(sort_by=key, row_limit=12))
