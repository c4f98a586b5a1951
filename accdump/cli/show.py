"""`accdump show DIR [NAME_GLOB]`: what a dump holds, and the records matching a name."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from accdump.diff.report import shown
from accdump.store import Role, load


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4g}"


def show(
    path: str, name: str | None, rank: int | None, step: int | None, limit: int, console: Console
) -> None:
    dump = load(path)
    meta = dump.meta()
    steps = dump.steps()
    step_text = f"steps {steps[0]}..{steps[-1]} ({len(steps)})" if steps else "no steps"
    # names, paths and metadata are data from the dump: never let rich read them as markup
    about = (
        f"mode {meta.get('mode')}, level {meta.get('level')}, recorded {meta.get('created', '?')} "
        f"on {meta.get('device_name', '?')} (torch {meta.get('torch_version', '?')})"
    )
    console.print(
        f"[bold]{shown(path)}[/bold]: {len(dump)} records, ranks {dump.ranks}, {step_text}, "
        f"{dump.nbytes() / 2**20:.1f} MiB; {shown(about)}"
    )
    if name is None:
        table = Table("rank", "segments", "steps", "records", "MiB", "world size")
        for r in dump.ranks:
            recs = sum(1 for _ in dump.records(rank=r))
            size = sum(p.stat().st_size for p in dump.segment_paths(r)) / 2**20
            table.add_row(
                str(r),
                str(len(dump.segment_paths(r))),
                str(len(dump.steps(r))),
                str(recs),
                f"{size:.1f}",
                str(dump.meta(r).get("world_size", "?")),
            )
        console.print(table)
        return
    table = Table(
        "rank",
        "step",
        "name",
        "call",
        "role",
        "arg",
        "dtype",
        "shape",
        "mean",
        "std",
        "absmax",
        "nan/inf",
        "tensor",
    )
    listed = 0
    for rec in dump.records(rank=rank, step=step, name=name):
        if listed == limit:
            console.print(f"(first {limit} records shown; use --limit)")
            break
        s = rec.stats
        table.add_row(
            str(rec.rank),
            str(rec.step),
            shown(rec.name) or "<root>",
            str(rec.call),
            Role(rec.role).name.lower(),
            shown(rec.arg),
            shown(rec.dtype),
            "x".join(map(str, rec.shape)) or "()",
            _fmt(s.mean),
            _fmt(s.std),
            _fmt(s.absmax),
            f"{s.nan}/{s.posinf + s.neginf}",
            "yes" if rec.has_tensor else (shown(rec.hash[:12]) if rec.hash else "-"),
        )
        listed += 1
    console.print(table)
    if listed == 0:
        console.print(f"no record matches {shown(repr(name))}")
