"""Where the time of tensor_stats_multi over 512 small tensors goes: host call vs device kernels."""

import time

import torch

from accdump import ops

xs = [torch.randn(1, 4096, device="cuda").to(torch.bfloat16) for _ in range(512)]
for _ in range(3):
    ops.tensor_stats_multi_raw(xs)
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(50):
    ops.tensor_stats_multi_raw(xs)
host = (time.perf_counter() - t) / 50
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(50):
    torch.ops.accdump.tensor_stats_multi.default(xs)
raw = (time.perf_counter() - t) / 50
torch.cuda.synchronize()
with torch.profiler.profile(
    activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
) as p:
    for _ in range(5):
        torch.ops.accdump.tensor_stats_multi.default(xs)
    torch.cuda.synchronize()
print(f"host time per call: ops {host * 1e6:.0f} us, raw op {raw * 1e6:.0f} us")
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12))
