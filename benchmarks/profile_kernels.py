"""Device time of a recorded forward, kernel by kernel (torch.profiler), against the plain one.

Answers whether recording costs host time (launch gaps) or device time (the statistics kernels):
for the plain and the recorded forward it sums kernel durations by group (accdump's statistics
kernels, everything else), and reports the GPU's busy span and the forward's wall time.

    python benchmarks/profile_kernels.py --seq 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from bench_record import PRESETS, build_model  # noqa: E402

import accdump  # noqa: E402


def kernel_events(prof: Any) -> list[tuple[str, float, float]]:
    """(name, start µs, duration µs) of every device kernel the profile saw."""
    out = []
    for ev in prof.profiler.kineto_results.events():
        if ev.device_type() == torch.autograd.DeviceType.CUDA:
            out.append((ev.name(), ev.start_ns() / 1e3, ev.duration_ns() / 1e3))
    return out


def group_of(name: str) -> str:
    if "accdump" in name and "stats" in name:
        return "accdump statistics"
    if "accdump" in name:
        return "accdump other"
    if name.startswith(("Memcpy", "Memset")):
        return "copies"
    return "model"


def summarise(kernels: list[tuple[str, float, float]], forwards: int) -> dict[str, Any]:
    by_group: dict[str, list[float]] = defaultdict(list)
    for name, _, dur in kernels:
        by_group[group_of(name)].append(dur)
    begin = min(s for _, s, _ in kernels)
    end = max(s + d for _, s, d in kernels)
    return {
        "span_us": (end - begin) / forwards,
        "busy_us": sum(d for _, _, d in kernels) / forwards,
        "groups": {
            g: {"launches": len(v) / forwards, "device_us": sum(v) / forwards, "mean_us": statistics.fmean(v)}
            for g, v in sorted(by_group.items())
        },
    }


def timed(model: torch.nn.Module, ids: torch.Tensor, reps: int) -> float:
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(ids)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def profiled(model: torch.nn.Module, ids: torch.Tensor, forwards: int) -> dict[str, Any]:
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(forwards):
            model(ids)
        torch.cuda.synchronize()
    return summarise(kernel_events(prof), forwards)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--forwards", type=int, default=3, help="forwards per profile")
    ap.add_argument("--reps", type=int, default=10, help="timed forwards of each kind")
    ap.add_argument("--json", default="profile_kernels.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_kernels needs a CUDA device")
    p = dict(PRESETS["gpu"], **({"seq": args.seq} if args.seq else {}))
    model = build_model(p)
    ids = torch.randint(0, p["vocab"], (1, p["seq"]), device="cuda")
    result: dict[str, Any] = {"preset": p}
    with torch.no_grad():
        for _ in range(3):
            model(ids)
        result["plain"] = profiled(model, ids, args.forwards)
        result["plain"]["wall_ms"] = timed(model, ids, args.reps)
        with accdump.record(model, Path(tempfile.mkdtemp()) / "d"):
            for _ in range(3):
                model(ids)
            result["recorded"] = profiled(model, ids, args.forwards)
            result["recorded"]["wall_ms"] = timed(model, ids, args.reps)
        result["plain"]["wall_ms_after"] = timed(model, ids, args.reps)

    what = f"Llama {p['layers']}L h{p['hidden']} seq {p['seq']} ({p['dtype']})"
    table = Table(title=f"kernels per forward, {what}")
    for col in ("run", "group", "launches", "device µs", "mean µs"):
        table.add_column(col, justify="right")
    for run in ("plain", "recorded"):
        r = result[run]
        for g, v in r["groups"].items():
            table.add_row(run, g, f"{v['launches']:.0f}", f"{v['device_us']:.0f}", f"{v['mean_us']:.2f}")
        busy = f"{r['busy_us']:.0f} / {r['span_us']:.0f}"
        table.add_row(run, "busy / span / wall", "", busy, f"{r['wall_ms'] * 1e3:.0f}")
    Console().print(table)
    print(f"plain wall after recording: {result['plain']['wall_ms_after']:.2f} ms")
    Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
