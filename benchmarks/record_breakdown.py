"""Where the host time of stats recording goes, in µs per record, by elimination.

Times one forward of a transformers Llama seven ways (median forward time of each, all
taking turns; wall time, and the CPU time of the calling thread until the forward returns,
which other tenants of a shared host do not change) and charges each difference to one part:
  torch hooks     for reference: pre- and post-hooks (partial, kwargs, always_call) doing nothing,
                  as accdump installed them before it wrapped forward
  wrappers        every module's forward wrapped as accdump wraps it (module_calls), doing nothing
  capture         accdump.record with no segment written: the native capture (accdump._C.StepCapture:
                  finding the tensors, one statistics launch per tensor not yet measured in the
                  step, the records' columns) and the step's hand-over
  writer          building and writing one segment per forward: columns in the writer thread, the
                  table and HDF5 file in the segment writer process (accdump's default)
  python capture  "capture" done in Python (ACCDUMP_CAPTURE=python), charged against "wrappers"
  writer thread   "writer" with the HDF5 file written in the writer thread (ACCDUMP_WRITER=thread),
                  charged against "capture"
and with --capture-parts, "capture" split in two:
  capture: calls  entering and leaving every module call and the steps, with a stand-in for the
                  native capture that finds nothing (a Python method: this overstates the calls
                  by its cost), charged against "wrappers"
  capture: no deferral  "capture" with every statistics launched at capture (ACCDUMP_DEFER=none),
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
from accdump.capture.module_calls import wrap_forward
from accdump.capture.writer_thread import step_columns

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


def noop_wrappers(model: torch.nn.Module) -> list[Any]:
    def enter(module: Any, args: Any, kwargs: Any) -> None:
        return None

    def leave(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        return None

    return [wrap_forward(mod, enter, leave) for _, mod in model.named_modules()]


def _write_partly(columns: bool, items: list[Any]) -> None:
    """What the writer thread does with steps before sending them, and no more."""
    for p in items:
        for ev in p.events:
            ev.synchronize()
        if columns:
            step_columns(p)


class _FindsNothing:
    """A StepCapture stand-in whose capture() records nothing (the rest is the real one's)."""

    def __init__(self, native: Any):
        self._native = native

    def capture(self, *args: Any) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._native, name)


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
    ap.add_argument(
        "--writer-parts",
        action="store_true",
        help="also split 'writer': the writer thread only waiting on each step's events, and "
        "waiting then building the step's columns (nothing sent to the segment writer)",
    )
    ap.add_argument(
        "--capture-parts",
        action="store_true",
        help="also split 'capture': the per-call Python alone, and every statistics launched at capture",
    )
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
        elif part in ("torch hooks", "wrappers"):
            handles = noop_hooks(model) if part == "torch hooks" else noop_wrappers(model)
            yield
            for h in handles:
                h.remove()
        else:
            if part == "writer thread":
                os.environ["ACCDUMP_WRITER"] = "thread"
            if part == "python capture":
                os.environ["ACCDUMP_CAPTURE"] = "python"
            if part == "capture: no deferral":
                os.environ["ACCDUMP_DEFER"] = "none"
            with accdump.record(model, tmp / part.replace(" ", "_").replace(":", ""), overwrite=True) as rec:
                os.environ.pop("ACCDUMP_WRITER", None)
                os.environ.pop("ACCDUMP_CAPTURE", None)
                os.environ.pop("ACCDUMP_DEFER", None)
                if part == "capture: calls":
                    rec._native = _FindsNothing(rec._native)
                if not part.startswith("writer"):
                    rec._writer.submit = lambda payload: None  # type: ignore[method-assign,union-attr]
                elif part in ("writer: wait", "writer: columns"):
                    rec._writer._write = functools.partial(  # type: ignore[method-assign,union-attr]
                        _write_partly, part == "writer: columns"
                    )
                yield

    # Parts run in turns, a few forwards each, so that a machine whose speed drifts (shared
    # CPUs) slows every part alike; the first forward of each turn is not timed.
    parts = ("plain", "torch hooks", "wrappers", "capture", "writer", "python capture", "writer thread")
    charged_against = {"torch hooks": "plain", "wrappers": "plain", "capture": "wrappers"}
    charged_against.update({"writer": "capture", "python capture": "wrappers", "writer thread": "capture"})
    if args.writer_parts:
        parts += ("writer: wait", "writer: columns")
        charged_against.update({"writer: wait": "capture", "writer: columns": "writer: wait"})
    if args.capture_parts:
        parts += ("capture: calls", "capture: no deferral")
        charged_against.update({"capture: calls": "wrappers", "capture: no deferral": "capture"})
    times: dict[str, list[float]] = {part: [] for part in parts}
    cpu_times: dict[str, list[float]] = {part: [] for part in parts}
    for r in range(args.rounds):
        # each round starts one part later: a part that leaves work behind (a writer process
        # flushing) or a position in the round that runs slower then weighs on every part alike
        for part in parts[r % len(parts) :] + parts[: r % len(parts)]:
            with setup(part):
                forward()
                for _ in range(args.per_turn):
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    t0, c0 = time.perf_counter(), time.thread_time()
                    forward()
                    cpu_times[part].append((time.thread_time() - c0) * 1e6)  # before the spinning sync
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    times[part].append((time.perf_counter() - t0) * 1e6)
    median = {part: statistics.median(ts) for part, ts in times.items()}
    cpu_median = {part: statistics.median(ts) for part, ts in cpu_times.items()}
    records = len(list(accdump.load(tmp / "writer").records(step=0)))
    op_us = op_host_us(dev, getattr(torch, p["dtype"]))

    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    table = Table(
        title=f"stats recording, module level: Llama {p['layers']}L h{p['hidden']} seq {p['seq']} on {name}, "
        f"{records} records per forward"
    )
    columns = ("part", "forward µs", "× plain", "+µs / record", "total µs / record")
    for c in (*columns, "host CPU µs", "× plain (CPU)", "+CPU µs / record"):
        table.add_column(c, justify="right")
    rows = []
    for part, t in median.items():
        against = charged_against.get(part, part)
        cpu = cpu_median[part]
        row = {
            "part": part,
            "forward_us": t,
            "ratio": t / median["plain"],
            "us_per_record": (t - median[against]) / records,
            "total_us_per_record": (t - median["plain"]) / records,
            "cpu_us": cpu,
            "cpu_ratio": cpu / cpu_median["plain"],
            "cpu_us_per_record": (cpu - cpu_median[against]) / records,
        }
        rows.append(row)
        table.add_row(
            part,
            f"{t:.0f}",
            f"{row['ratio']:.3f}",
            f"{row['us_per_record']:.2f}",
            f"{row['total_us_per_record']:.2f}",
            f"{cpu:.0f}",
            f"{row['cpu_ratio']:.3f}",
            f"{row['cpu_us_per_record']:.2f}",
        )
    Console(width=170).print(table)
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
