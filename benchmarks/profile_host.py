"""Where the host time of a stats-recorded forward goes, by runtime call and by Python function.

Runs bench_record's model plain and recorded (module level, stats, nothing written) under
torch.profiler and prints, per forward, the count and host time of each CUDA runtime call
(the launches accdump adds show up as extra cudaLaunchKernel calls) and the top of a cProfile
of the recorded forward (the native capture's calls appear as StepCapture methods).

    python benchmarks/profile_host.py [--seq N] [--forwards N]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import accdump

sys.path.insert(0, str(Path(__file__).parent))
from bench_record import PRESETS, build_model  # noqa: E402


def runtime_calls(prof: profile, forwards: int) -> dict[str, tuple[float, float]]:
    """Runtime-API events (cuda*/cu*) of a profile: name -> (calls, host µs) per forward."""
    out: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CPU and ev.name.startswith("cu"):
            out[ev.name][0] += 1
            out[ev.name][1] += ev.cpu_time_total
    return {k: (v[0] / forwards, v[1] / forwards) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--forwards", type=int, default=5)
    args = ap.parse_args()
    p = dict(
        PRESETS["gpu" if torch.cuda.is_available() else "cpu"], **({"seq": args.seq} if args.seq else {})
    )
    model = build_model(p)
    ids = torch.randint(0, p["vocab"], (1, p["seq"]), generator=torch.Generator().manual_seed(0)).to(
        p["device"]
    )
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])

    def forwards() -> None:
        with torch.no_grad():
            for _ in range(args.forwards):
                model(ids)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    forwards()
    with profile(activities=acts) as plain:
        forwards()
    tmp = Path(tempfile.mkdtemp(prefix="accdump-host-"))
    with accdump.record(model, tmp / "d") as rec:
        rec._writer.submit = lambda payload: None  # type: ignore[method-assign,union-attr]
        forwards()
        with profile(activities=acts) as recorded:
            forwards()
        cp = cProfile.Profile()
        cp.enable()
        forwards()
        cp.disable()
    a, b = runtime_calls(plain, args.forwards), runtime_calls(recorded, args.forwards)
    print(
        f"runtime calls per forward (seq {p['seq']}): name, plain calls / µs, recorded calls / µs, "
        "µs per extra call"
    )
    for name in sorted(set(a) | set(b), key=lambda k: -b.get(k, (0, 0))[1]):
        ca, ta = a.get(name, (0, 0))
        cb, tb = b.get(name, (0, 0))
        extra = f"{(tb - ta) / (cb - ca):.2f}" if cb > ca else "-"
        print(f"  {name:36s} {ca:7.0f} {ta:9.0f} {cb:7.0f} {tb:9.0f} {extra:>7s}")
    s = io.StringIO()
    pstats.Stats(cp, stream=s).sort_stats("tottime").print_stats(25)
    print(s.getvalue()[-6000:])


if __name__ == "__main__":
    main()
