"""Host cost of the recorder's native capture, piece by piece, in µs per call (micro-benchmark).

    python benchmarks/profile_capture.py [--device cuda]

Rows: one StepCapture.capture of a tensor not yet measured (the statistics launch included) and
of one already measured; the statistics op through torch.ops; an empty kernel launch through
torch (x.add_(0) on a tiny tensor) as the floor of any launch; then a stack of Identity modules
plain, with do-nothing hooks shaped like the recorder's, and recorded (native and Python capture,
nothing written), per module call (two records each).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import accdump
from accdump import _C
from accdump.capture.step_buffer import NATIVE_DTYPES

sys.path.insert(0, str(Path(__file__).parent))
from record_breakdown import noop_hooks, noop_wrappers  # noqa: E402


def best_us(f: Callable[[], None], per: int, sync: bool, repeat: int = 30) -> float:
    best = float("inf")
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best / per * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=200, help="tensors / modules per timed loop")
    args = ap.parse_args()
    dev, n = args.device, args.n
    sync = dev == "cuda"
    torch.set_num_threads(1)
    shape = (1, 512, 2048) if dev == "cuda" else (1, 8, 64)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    xs = [torch.randn(shape, device=dev).to(dtype) for _ in range(n)]
    cap = _C.StepCapture(NATIVE_DTYPES)

    def capture_new() -> None:
        for x in xs:
            cap.capture(x, "m", 0, 1, "K")
        cap.finish()

    def capture_seen() -> None:
        for x in xs:
            cap.capture(x, "m", 0, 1, "K")

    out = torch.zeros(256, 13, dtype=torch.float64, device=dev)
    op = torch.ops.accdump.tensor_stats_into.default

    def op_calls() -> None:
        for i, x in enumerate(xs):
            op(x, out, i % 256)

    tiny = torch.zeros(1, device=dev)

    def launches() -> None:
        for _ in range(n):
            tiny.add_(0)

    rows = {
        "capture, new tensor": best_us(capture_new, n, sync),
        "capture, measured tensor": (capture_seen(), best_us(capture_seen, n, sync))[1],
        "tensor_stats_into via torch.ops": best_us(op_calls, n, sync),
        "x.add_(0) via torch (a launch)": best_us(launches, n, sync),
    }
    cap.finish()
    model = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(n)])
    x = xs[0]

    def forward() -> None:
        model(x)

    rows["Identity module call, plain"] = best_us(forward, n, sync)

    handles = noop_hooks(model)
    rows["... with do-nothing hooks"] = best_us(forward, n, sync)
    for h in handles:
        h.remove()
    handles = noop_wrappers(model)
    rows["... with do-nothing forward wrappers"] = best_us(forward, n, sync)
    for h in handles:
        h.remove()
    tmp = tempfile.mkdtemp(prefix="accdump-profile-")
    for how in ("native", "python"):
        os.environ["ACCDUMP_CAPTURE"] = how
        with accdump.record(model, os.path.join(tmp, how)) as rec:
            rec._writer.submit = lambda payload: None  # type: ignore[method-assign,union-attr]
            rows[f"... recorded, {how} capture"] = best_us(forward, n, sync)
        os.environ.pop("ACCDUMP_CAPTURE", None)
    for k, v in rows.items():
        print(f"{k:40s} {v:7.2f} µs")


if __name__ == "__main__":
    main()
