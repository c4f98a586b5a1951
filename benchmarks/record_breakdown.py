"""Where the host time of stats recording goes, in µs per record, by elimination.

Times one forward of a transformers Llama six ways (median forward time of each, the six
taking turns) and charges each difference to one part:
  hooks           pre- and post-hooks shaped like accdump's (partial, kwargs, always_call) doing nothing
  capture         accdump.record with no segment written: the native capture (accdump._C.StepCapture:
                  finding the tensors, one statistics launch per tensor not yet measured in the
                  step, the records' columns) and the step's hand-over
  writer          building and writing one segment per forward: columns in the writer thread, the
                  table and HDF5 file in the segment writer process (accdump's default)
  python capture  "capture" done in Python (ACCDUMP_CAPTURE=python), charged against "hooks"
  writer thread   "writer" with the HDF5 file written in the writer thread (ACCDUMP_WRITER=thread),
                  charged against "capture"
and also the host cost of one statistics op call through torch.ops on a small tensor.

    python benchmarks/record_breakdown.py                  # GPU: bench_record's H100 preset
    python benchmarks/record_breakdown.py --preset cpu     # 8 layers, hidden 64, 8 tokens: Python-bound
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import accdump

sys.path.insert(0, str(Path(__file__).parent))
from bench_record import PRESETS, build_model  # noqa: E402

TINY = dict(layers=8, hidden=64, inter=128, heads=4, vocab=128, seq=8, dtype="float32", device="cpu")


def noop_hooks(model: torch.nn.Module) -> list[Any]:
    def pre(name: str, module: Any, args: Any, kwargs: Any) -> None:
        return None

    def post(name: str, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        return None

    handles = []
    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(functools.partial(pre, name), with_kwargs=True))
        handles.append(
            mod.register_forward_hook(functools.partial(post, name), with_kwargs=True, always_call=True)
        )
    return handles


def op_host_us(device: str, dtype: torch.dtype) -> float:
    """Host time of one tensor_stats_into call on a [1, 4096] tensor (launch only on CUDA)."""
    x = torch.randn(1, 4096, device=device).to(dtype)
    out = torch.zeros(256, len(accdump.ops.STATS_FIELDS), dtype=torch.float64, device=device)
    op = torch.ops.accdump.tensor_stats_into.default
    for _ in range(100):
        op(x, out, 3)
    if device == "cuda":
        torch.cuda.synchronize()
    n = 1000  # fewer than the launch queue holds, so the host never waits for the device
    t0 = time.perf_counter()
    for _ in range(n):
        op(x, out, 3)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["gpu", "cpu"], default="gpu" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=10, help="turns of each part")
    ap.add_argument("--per-turn", type=int, default=5, help="timed forwards per turn")
    ap.add_argument("--json", default="record_breakdown.json")
    args = ap.parse_args()
    p = PRESETS["gpu"] if args.preset == "gpu" else TINY
    dev = p["device"]
    if dev == "cpu":
        torch.set_num_threads(1)
    model = build_model(p)
    ids = torch.randint(0, p["vocab"], (1, p["seq"]), generator=torch.Generator().manual_seed(0)).to(dev)

    def forward() -> None:
        with torch.no_grad():
            model(ids)

    tmp = Path(tempfile.mkdtemp(prefix="accdump-breakdown-"))

    @contextlib.contextmanager
    def setup(part: str) -> Iterator[None]:
        if part == "plain":
            yield
        elif part == "hooks":
            handles = noop_hooks(model)
            yield
            for h in handles:
                h.remove()
        else:
            if part == "writer thread":
                os.environ["ACCDUMP_WRITER"] = "thread"
            if part == "python capture":
                os.environ["ACCDUMP_CAPTURE"] = "python"
            with accdump.record(model, tmp / "d", overwrite=True) as rec:
                os.environ.pop("ACCDUMP_WRITER", None)
                os.environ.pop("ACCDUMP_CAPTURE", None)
                if not part.startswith("writer"):
                    rec._writer.submit = lambda payload: None  # type: ignore[method-assign,union-attr]
                yield

    # Parts run in turns, a few forwards each, so that a machine whose speed drifts (shared
    # CPUs) slows every part alike; the first forward of each turn is not timed.
    parts = ("plain", "hooks", "capture", "writer", "python capture", "writer thread")
    charged_against = {"hooks": "plain", "capture": "hooks", "writer": "capture", "python capture": "hooks"}
    charged_against["writer thread"] = "capture"
    times: dict[str, list[float]] = {part: [] for part in parts}
    for _ in range(args.rounds):
        for part in parts:
            with setup(part):
                forward()
                for _ in range(args.per_turn):
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    forward()
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    times[part].append((time.perf_counter() - t0) * 1e6)
    median = {part: statistics.median(ts) for part, ts in times.items()}
    records = len(list(accdump.load(tmp / "d").records(step=0)))
    op_us = op_host_us(dev, getattr(torch, p["dtype"]))

    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    table = Table(
        title=f"stats recording, module level: Llama {p['layers']}L h{p['hidden']} seq {p['seq']} on {name}, "
        f"{records} records per forward"
    )
    for c in ("part", "forward µs", "× plain", "+µs / record", "total µs / record"):
        table.add_column(c, justify="right")
    rows = []
    for part, t in median.items():
        prev = median[charged_against.get(part, part)]
        row = {
            "part": part,
            "forward_us": t,
            "ratio": t / median["plain"],
            "us_per_record": (t - prev) / records,
            "total_us_per_record": (t - median["plain"]) / records,
        }
        rows.append(row)
        table.add_row(
            part,
            f"{t:.0f}",
            f"{row['ratio']:.3f}",
            f"{row['us_per_record']:.2f}",
            f"{row['total_us_per_record']:.2f}",
        )
    Console(width=140).print(table)
    print(f"one tensor_stats_into call: {op_us:.2f} µs of host time")
    Path(args.json).write_text(
        json.dumps(
            {
                "device": name,
                "preset": p,
                "records": records,
                "op_host_us": op_us,
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
