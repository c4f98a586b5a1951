"""Recording overhead on a transformers Llama built from a config (random weights, no downloads).

Times the forward pass plain, with every module's forward wrapped as accdump wraps it (doing
nothing), and under accdump.record in stats mode (module and op level), hash and tensor mode;
prints a table and writes JSON. Each row's ratio is against a plain run timed next to it
(hosts whose speed drifts between rows skew ratios against one plain run taken at the start).

Next to wall time, each row has the CPU time the calling thread spent inside the run (up to its
return, before any device synchronisation): what the host does for a forward, unlike wall time
untouched by other tenants taking the host's CPUs. Where the host sets the pace (the H100 preset
at seq 512) its ratio is the overhead the run itself causes; the writer's thread and process
are not in it.

    python benchmarks/bench_record.py                 # H100 preset: 16 layers, hidden 2048, seq 512, bf16
    python benchmarks/bench_record.py --preset cpu    # 4 layers, hidden 256, prefill 32 + 4 decode steps
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from rich.console import Console
from rich.table import Table

import accdump
from accdump.capture.module_calls import wrap_forward

PRESETS = {
    "gpu": dict(
        layers=16, hidden=2048, inter=5632, heads=16, vocab=32000, seq=512, dtype="bfloat16", device="cuda"
    ),
    "cpu": dict(layers=4, hidden=256, inter=688, heads=8, vocab=1024, seq=32, dtype="float32", device="cpu"),
}


def build_model(p: dict) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=p["hidden"],
        intermediate_size=p["inter"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["heads"],
        vocab_size=p["vocab"],
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype=getattr(torch, p["dtype"]), device=p["device"]).eval()
    return model


class Timing(NamedTuple):
    wall: float  # median seconds per run, device work included
    cpu: float  # median CPU seconds of the calling thread per run, until the run returns


def time_it(fn: Callable[[], object], device: str, reps: int) -> Timing:
    for _ in range(2):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)  # before synchronize(), which spins
        if device == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
    return Timing(statistics.median(wall), statistics.median(cpu))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu"
    )
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", default="bench_record.json")
    ap.add_argument("--skip-op", action="store_true", help="skip the (slow) op-level row")
    ap.add_argument(
        "--seq",
        type=int,
        help="tokens per forward instead of the preset's (longer: the device, not the host, sets the pace)",
    )
    ap.add_argument("--stats-only", action="store_true", help="time only the module-level stats row")
    args = ap.parse_args()
    p = dict(PRESETS[args.preset], **({"seq": args.seq} if args.seq else {}))
    dev = p["device"]
    model = build_model(p)
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, p["vocab"], (1, p["seq"]), generator=gen).to(dev)

    if args.preset == "cpu":

        def run() -> object:
            with torch.no_grad():
                return model.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)

        what = f"generate: prefill {p['seq']} + 4 decode steps"
    else:

        def run() -> object:
            with torch.no_grad():
                return model(ids)

        what = f"forward, seq {p['seq']}"

    def row_of(config: str, t: Timing, plain: Timing) -> dict:
        return {
            "config": config,
            "seconds": t.wall,
            "plain_seconds": plain.wall,
            "cpu_seconds": t.cpu,
            "plain_cpu_seconds": plain.cpu,
        }

    plain = time_it(run, dev, args.reps)
    rows = [row_of("plain", plain, plain)]

    def nothing(*args: object) -> None:
        return None

    handles = [wrap_forward(m, nothing, nothing) for m in model.modules()]
    wrapped = time_it(run, dev, args.reps)
    for h in handles:
        h.remove()
    rows.append(row_of("wrappers that do nothing", wrapped, time_it(run, dev, args.reps)))

    tmp = Path(tempfile.mkdtemp(prefix="accdump-bench-"))
    configs = [
        ("stats, module level", dict(mode="stats", level="module"), args.reps),
        ("hash, module level", dict(mode="hash", level="module"), args.reps),
        ("tensor, module level", dict(mode="tensor", level="module"), max(3, args.reps // 3)),
    ]
    if not args.skip_op:
        configs.insert(1, ("stats, op level", dict(mode="stats", level="op"), max(3, args.reps // 3)))
    if args.stats_only:
        configs = configs[:1]
    for label, kw, reps in configs:
        out = tmp / label.replace(", ", "_").replace(" ", "_")
        plain_before = time_it(run, dev, args.reps)
        with accdump.record(model, out, **kw) as rec:
            t = time_it(run, dev, reps)
        dump = accdump.load(out)
        row = row_of(label, t, plain_before)
        row["records_per_run"] = len(dump) // max(1, len(dump.steps()) // (1 if args.preset == "gpu" else 5))
        row["dump_mib"] = dump.nbytes() / 2**20
        if rec._writer is not None:
            row["stalled_ms_per_run"] = rec._writer.seconds_stalled / (reps + 2) * 1e3
        if kw["mode"] == "tensor" and rec._writer is not None and rec._writer.seconds_writing:
            row["write_gbps"] = rec._writer.bytes_written / rec._writer.seconds_writing / 1e9
        rows.append(row)
        shutil.rmtree(out, ignore_errors=True)
    for r in rows:
        r["ratio"] = r["seconds"] / r["plain_seconds"]
        r["cpu_ratio"] = r["cpu_seconds"] / r["plain_cpu_seconds"]
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    table = Table(
        title=f"accdump record overhead: Llama {p['layers']}L h{p['hidden']} {p['dtype']} on {name} ({what})"
    )
    columns = ("config", "ms", "× plain", "host CPU ms", "× plain (CPU)", "records/run", "dump MiB")
    for c in (*columns, "write GB/s", "stalled ms/run"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(
            r["config"],
            f"{r['seconds'] * 1e3:.2f}",
            f"{r['ratio']:.2f}",
            f"{r['cpu_seconds'] * 1e3:.2f}",
            f"{r['cpu_ratio']:.2f}",
            str(r.get("records_per_run", "-")),
            f"{r['dump_mib']:.1f}" if "dump_mib" in r else "-",
            f"{r['write_gbps']:.2f}" if "write_gbps" in r else "-",
            f"{r['stalled_ms_per_run']:.1f}" if "stalled_ms_per_run" in r else "-",
        )
    Console(width=160).print(table)
    Path(args.json).write_text(
        json.dumps({"device": name, "preset": p, "what": what, "rows": rows}, indent=1)
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
