"""Cost of recording inside CUDA graphs: decode-step replay time with and without probes captured.

The model is the demo decoder's Llama layout at the record benchmark's size (16 layers, hidden
2048, MLP 5632, 16 heads, vocab 32000, bfloat16) with static KV caches; a 512-token prompt is
prefilled, then one decode step is captured and replayed. Rows:

- eager decode step (no graph): what graphs save, for scale
- replay: the captured step, no recorder
- replay, probes inside, host idle: graphs captured with statistics (or fingerprint) probes in
  every module, replayed with the recorder paused: the device-side cost alone
- replay + record: replayed while recording: each replay is one step written to the dump

    python benchmarks/bench_cuda_graph.py [--layers 16] [--reps 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import accdump
from accdump.demo.graphs import GraphDecoder
from accdump.demo.model import Config, DemoLM

PROMPT, MAX_LEN = 512, 1024


def build(layers: int) -> DemoLM:
    cfg = Config(layers=layers, hidden=2048, heads=16, intermediate=5632, vocab=32000, prompt_len=PROMPT)
    with torch.device("meta"):
        model = DemoLM(cfg)
    model = model.to_empty(device="cuda").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model.to(torch.bfloat16)


def per_call(fn, reps: int) -> float:
    """Median over 5 batches of `reps` calls of the seconds per call (device synchronised)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    batches = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        batches.append((time.perf_counter() - t0) / reps)
    return sorted(batches)[2]


def captured(model: DemoLM, ids: torch.Tensor) -> GraphDecoder:
    dec = GraphDecoder(model, MAX_LEN)
    dec.generate(ids, 2)  # prefill, capture, first replay
    return dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--json", default="bench_cuda_graph.json")
    args = ap.parse_args()
    model = build(args.layers)
    ids = torch.randint(0, 32000, (1, PROMPT), generator=torch.Generator().manual_seed(0)).cuda()
    tmp = Path(tempfile.mkdtemp(prefix="accdump-bench-graph-"))
    rows: list[dict] = []

    eager = GraphDecoder(model, MAX_LEN, use_graph=False)
    eager.generate(ids, 2)
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    with torch.no_grad():
        rows.append(
            {
                "config": "eager decode step (no graph)",
                "seconds": per_call(lambda: eager._decode(tok, PROMPT), args.reps),
            }
        )
    plain = captured(model, ids)
    base = per_call(plain.graph.replay, args.reps)
    rows.append({"config": "replay", "seconds": base})
    for mode in ("stats", "hash"):
        out = tmp / mode
        with accdump.record(model, out, mode=mode) as rec:
            dec = captured(model, ids)
            probes = dec.graph._accdump_probes
            with accdump.paused():
                idle = per_call(dec.graph.replay, args.reps)
            recorded = per_call(dec.graph.replay, args.reps)
        n = len(probes.buf.captures)
        rows.append(
            {"config": f"replay, {mode} probes inside, host idle", "seconds": idle, "records_per_step": n}
        )
        rows.append(
            {
                "config": f"replay + record ({mode})",
                "seconds": recorded,
                "records_per_step": n,
                "steps_written": len(rec.steps_written),
                "segments_written": rec._writer.segments_written if rec._writer else 0,
                "stalled_s": rec._writer.seconds_stalled if rec._writer else 0.0,
            }
        )
        shutil.rmtree(out, ignore_errors=True)
    for r in rows:
        r["ratio"] = r["seconds"] / base
    name = torch.cuda.get_device_name()
    table = Table(
        title=f"accdump inside CUDA graphs: decode step, {args.layers}-layer Llama layout h2048 bf16, "
        f"KV {MAX_LEN} slots, on {name}"
    )
    for c in ("config", "µs / step", "× replay", "records / step"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(
            r["config"], f"{r['seconds'] * 1e6:.1f}", f"{r['ratio']:.3f}", str(r.get("records_per_step", "-"))
        )
    Console(width=160).print(table)
    Path(args.json).write_text(json.dumps({"device": name, "layers": args.layers, "rows": rows}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
