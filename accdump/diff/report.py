"""What compare tells a person: the terminal summary, and JSON, CSV and HTML reports."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from accdump.diff.metrics import PairMetrics, Verdict
from accdump.diff.result import PAIR_COLUMNS, CompareResult, Pair

STYLE = {
    Verdict.PASS: "green",
    Verdict.SUSPICIOUS: "yellow",
    Verdict.BROKEN: "red",
    Verdict.CATASTROPHIC: "bold red",
    Verdict.MISMATCH: "magenta",
}


# C0 controls, DEL and C1 controls: a name holding them could drive the reader's terminal
CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def shown(text: str) -> str:
    """`text` from a dump (a name, a path) for rich: control characters as \\xNN, markup escaped."""
    return escape(text.translate(CONTROLS))


def _f(v: Any, fmt: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, fmt)


def neighbourhood(result: CompareResult, width: int = 8) -> list[Pair]:
    """Pairs around the first divergence (or the worst pairs when there is none)."""
    pairs = result.pairs
    if result.first_divergence is None:
        return sorted(pairs, key=lambda p: -int(p.verdict))[:width]
    i = pairs.index(result.first_divergence.pair)
    return pairs[max(0, i - width) : i + width // 2 + 1]


def print_summary(result: CompareResult, console: Console) -> None:
    # record names and paths are data from the dumps: never let rich read them as markup
    console.print(f"[bold]{shown(result.verdict_line())}[/bold]")
    for finding in result.findings:
        console.print(f"[yellow]{shown(finding)}[/yellow]")
    if result.first_token_diff:
        tok = result.first_token_diff
        console.print(
            f"First differing token: rank {tok['rank']}, step {tok['step']}, position {tok['position']}: "
            f"golden {tok['golden_token']}, target {tok['target_token']}"
        )
    d = result.first_divergence
    if d is not None:
        if d.inputs:
            ins = ", ".join(f"{p.target.arg}: {p.verdict.label}" for p in d.inputs)
            console.print(shown(f"Inputs of {d.pair.target.name or '<root>'}: {ins}"))
        m = d.pair.metrics
        if m is not None and m.rows_cosine_worst:
            rows = ", ".join(f"row {r} cos {c:.4f}" for r, c in m.rows_cosine_worst)
            console.print(f"Rows (tokens) that diverge most: {rows}")
        if result.propagates is not None:
            console.print(
                "The error propagates to the end of the step."
                if result.propagates
                else "Later records recover: the error is isolated."
            )
    table = Table(
        "step",
        "name",
        "call",
        "role",
        "arg",
        "dtype g/t",
        "cosine",
        "norm ratio",
        "rel L2",
        "verdict",
        title="records around the divergence" if d else "worst records",
    )
    for p in neighbourhood(result):
        m = p.metrics
        t = p.target
        marker = " <-" if d is not None and p is d.pair else ""
        table.add_row(
            str(t.step),
            shown(t.name or "<root>") + marker,
            str(t.call),
            t.role.name.lower(),
            shown(t.arg),
            shown(f"{p.golden.dtype}/{t.dtype}"),
            _f(m.cosine if m else None),
            _f(m.norm_ratio if m else None),
            _f(m.rel_l2 if m else None, ".3g"),
            f"[{STYLE[p.verdict]}]{p.verdict.label}[/]",
        )
    console.print(table)
    console.print(
        f"{len(result.pairs)} pairs compared; {shown(result.steps_note)}; "
        f"{len(result.only_golden)} records only in golden, {len(result.only_target)} only in target"
    )


def finite_json(o: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite numbers become null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_json(v) for v in o]
    return o


def write_json(result: CompareResult, path: str | Path) -> None:
    """The whole result; NaN / Inf metrics (e.g. the SQNR of identical tensors) are written as null.
    Pairs are encoded one at a time (the text json.dumps gives): memory does not grow with them."""
    doc = finite_json(replace(result, pairs=[]).to_dict())
    doc["pairs"] = doc.pop("pairs")  # last, so the text ends with its (here empty) list
    head = json.dumps(doc, indent=1, allow_nan=False)
    empty = '"pairs": []\n}'
    with open(path, "w") as f:
        f.write(head[: -len(empty)] + '"pairs": [')
        sep = "\n  "
        for p in result.pairs:
            f.write(sep + json.dumps(finite_json(p.row()), indent=1, allow_nan=False).replace("\n", "\n  "))
            sep = ",\n  "
        f.write("\n ]\n}" if result.pairs else "]\n}")


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def write_csv(result: CompareResult, path: str | Path) -> None:
    rows = [_clean(p.row()) for p in result.pairs]
    # fixed columns: a pair without metrics (shapes that do not align) leaves its metric cells empty
    cols = [*PAIR_COLUMNS, *(f.name for f in fields(PairMetrics))]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})


def write_html(result: CompareResult, path: str | Path) -> None:
    """A self-contained HTML page: the verdict, the first divergence, metric curves along the run,
    golden vs target per token there, both runs' metadata side by side, and a searchable table."""
    from accdump.diff.html_report import write_html as write  # jinja2 and matplotlib only when asked

    write(result, path)
