"""Host time of the native capture's parts in a recorded forward (module level, stats mode).

Records bench_record's model with a StepCapture that adds up the host time of its parts
(StepCapture(timing=True)) and prints each part's calls and µs per forward, next to the
forward's own time plain and recorded (medians; nothing written). Parts nest: `capture` is
every StepCapture.capture call (`walk` and `measure` inside it), `measure` holds the flushes
that a full batch starts, `flush` holds its `stats_call` (the launches) and `record_stream`,
`finish` (the end of the step) holds the last flush.

    python benchmarks/capture_parts.py [--seq N] [--forwards N] [--defer cuda|none|all]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import accdump
from accdump import _C
from accdump.capture.step_buffer import NATIVE_DTYPES

sys.path.insert(0, str(Path(__file__).parent))
from bench_record import PRESETS, build_model  # noqa: E402


def timed_forwards(forward: object, n: int, cuda: bool) -> float:
    """Median µs of n forwards (each synchronised)."""
    ts = []
    for _ in range(n):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        forward()  # type: ignore[operator]
        if cuda:
            torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--forwards", type=int, default=30)
    ap.add_argument("--defer", choices=["cuda", "none", "all"], default="cuda")
    ap.add_argument("--json", default="capture_parts.json")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    p = dict(PRESETS["gpu" if cuda else "cpu"], **({"seq": args.seq} if args.seq else {}))
    model = build_model(p)
    ids = torch.randint(0, p["vocab"], (1, p["seq"]), generator=torch.Generator().manual_seed(0)).to(
        p["device"]
    )

    def forward() -> None:
        with torch.no_grad():
            model(ids)

    forward()
    plain_us = timed_forwards(forward, args.forwards, cuda)
    native = _C.StepCapture(NATIVE_DTYPES, defer=args.defer, timing=True)
    with accdump.record(model, Path(tempfile.mkdtemp(prefix="accdump-parts-")) / "d") as rec:
        rec._writer.submit = lambda payload: None  # type: ignore[method-assign,union-attr]
        rec._native = native  # a timed one, from the first step on
        forward()
        forward()  # the first step measures at capture; deferral starts with the second
        before = native.timings
        recorded_us = timed_forwards(forward, args.forwards, cuda)
        after = native.timings
    table = Table(
        title=f"native capture's host time by part, per forward: Llama {p['layers']}L h{p['hidden']} "
        f"seq {p['seq']} ({'CUDA' if cuda else 'CPU'}, defer={args.defer}); forward {plain_us:.0f} µs plain, "
        f"{recorded_us:.0f} µs recorded"
    )
    for c in ("part", "calls", "µs", "µs a call", "% of recorded forward"):
        table.add_column(c, justify="right")
    rows = []
    for part, (calls, secs) in after.items():
        n = (calls - before[part][0]) / args.forwards
        us = (secs - before[part][1]) / args.forwards * 1e6
        rows.append({"part": part, "calls": n, "us": us})
        table.add_row(
            part, f"{n:.0f}", f"{us:.0f}", f"{us / n:.2f}" if n else "-", f"{100 * us / recorded_us:.1f}"
        )
    Console(width=150).print(table)
    Path(args.json).write_text(
        json.dumps(
            {
                "preset": p,
                "defer": args.defer,
                "plain_us": plain_us,
                "recorded_us": recorded_us,
                "parts": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
