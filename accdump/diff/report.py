"""What compare tells a person: the terminal summary, and JSON, CSV and HTML reports."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from accdump.diff.comparison import PAIR_COLUMNS, CompareResult, Pair
from accdump.diff.metrics import PairMetrics, Verdict

STYLE = {
    Verdict.PASS: "green",
    Verdict.SUSPICIOUS: "yellow",
    Verdict.BROKEN: "red",
    Verdict.CATASTROPHIC: "bold red",
    Verdict.MISMATCH: "magenta",
}


# C0 controls, DEL and C1 controls: a name holding them could drive the reader's terminal
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def shown(text: str) -> str:
    """`text` from a dump (a name, a path) for rich: control characters as \\xNN, markup escaped."""
    return escape(text.translate(_CONTROLS))


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
    """The whole result; NaN / Inf metrics (e.g. the SQNR of identical tensors) are written as null."""
    Path(path).write_text(json.dumps(finite_json(result.to_dict()), indent=1, allow_nan=False))


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


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(result: CompareResult) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    if result.trajectory:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        steps = sorted({p["step"] for p in result.trajectory})
        for step in steps[:12]:
            pts = [p for p in result.trajectory if p["step"] == step]
            layers = [p["layer"] for p in pts]
            cos = [p["cosine"] if p["cosine"] is not None else math.nan for p in pts]
            err = [p["rel_l2"] if p["rel_l2"] is not None else abs((p["norm_ratio"] or 1.0) - 1) for p in pts]
            axes[0].plot(layers, cos, marker="o", label=f"step {step}")
            axes[1].plot(layers, err, marker="o", label=f"step {step}")
        axes[0].set(title="residual stream: cosine golden vs target", xlabel="layer", ylabel="cosine")
        axes[1].set(title="relative error (rel L2, or |norm ratio - 1| from stats)", xlabel="layer")
        axes[1].set_yscale("symlog", linthresh=1e-4)
        axes[0].legend(fontsize=7)
        plots.append(("Layer by layer", _png(fig)))
        plt.close(fig)
    d = result.first_divergence
    if d is not None and d.token_cosine:
        fig, ax = plt.subplots(figsize=(11, 3))
        ax.plot(range(len(d.token_cosine)), d.token_cosine, marker=".")
        # parse_math off: a name holding '$...$' is text, not mathtext (which can fail to parse)
        ax.set_title(f"{d.pair.target.name}: cosine per row (token), golden vs target", parse_math=False)
        ax.set(xlabel="row", ylabel="cosine")
        plots.append(("Per token at the first divergence", _png(fig)))
        plt.close(fig)
    return plots


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>accdump compare</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
.verdict{font-size:1.25em;font-weight:600;padding:.6em;border-radius:6px;
 background:{{ 'var(--bad)' if diverged else 'var(--ok)' }}}
:root{--ok:#dff5e1;--bad:#fde2e1}
table{border-collapse:collapse;font-size:.85em}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
td.name{text-align:left;font-family:monospace}
tr.div{outline:2px solid #c00}
.pass{background:#e7f6e7}.suspicious{background:#fff5cc}.broken{background:#fbd5d5}.catastrophic{background:#f39c9c}
.mismatch{background:#e8d5f5}
</style></head><body>
<h1>accdump compare</h1>
<p>golden <code>{{ golden }}</code><br>target <code>{{ target }}</code></p>
<p class="verdict">{{ verdict }}</p>
{% if token %}<p>First differing token: step {{ token.step }}, position {{ token.position }}:
golden {{ token.golden_token }}, target {{ token.target_token }}.</p>{% endif %}
<p>{{ steps }}</p>
{% for title, png in plots %}<h2>{{ title }}</h2><img src="data:image/png;base64,{{ png }}">{% endfor %}
<h2>Records {{ 'around the divergence' if diverged else '(worst first)' }}</h2>
<table><tr><th>step</th><th>name</th><th>call</th><th>role</th><th>arg</th><th>dtypes</th><th>cosine</th>
<th>norm ratio</th><th>rel L2</th><th>SQNR dB</th><th>verdict</th></tr>
{% for r in rows %}<tr class="{{ r.verdict }}{{ ' div' if r.is_div else '' }}"><td>{{ r.step }}</td>
<td class="name">{{ r.name }}</td><td>{{ r.call }}</td><td>{{ r.role }}</td><td>{{ r.arg }}</td>
<td>{{ r.dtypes }}</td><td>{{ r.cosine }}</td><td>{{ r.norm_ratio }}</td><td>{{ r.rel_l2 }}</td>
<td>{{ r.sqnr }}</td><td>{{ r.verdict }}</td></tr>{% endfor %}
</table>
<p>{{ n_pairs }} pairs compared; {{ only_g }} records only in golden, {{ only_t }} only in target.</p>
</body></html>"""


def write_html(result: CompareResult, path: str | Path) -> None:
    import jinja2

    d = result.first_divergence
    rows = []
    for p in neighbourhood(result, width=20):
        m = p.metrics
        rows.append(
            {
                "step": p.target.step,
                "name": p.target.name or "<root>",
                "call": p.target.call,
                "role": p.target.role.name.lower(),
                "arg": p.target.arg,
                "dtypes": f"{p.golden.dtype}/{p.target.dtype}",
                "cosine": _f(m.cosine if m else None),
                "norm_ratio": _f(m.norm_ratio if m else None),
                "rel_l2": _f(m.rel_l2 if m else None, ".3g"),
                "sqnr": _f(m.sqnr_db if m else None, ".1f"),
                "verdict": p.verdict.label,
                "is_div": d is not None and p is d.pair,
            }
        )
    html = (
        jinja2.Environment(autoescape=True)
        .from_string(_PAGE)
        .render(
            golden=result.golden,
            target=result.target,
            verdict=result.verdict_line(),
            diverged=result.exit_code != 0,
            token=result.first_token_diff,
            steps=result.steps_note,
            plots=_plots(result),
            rows=rows,
            n_pairs=len(result.pairs),
            only_g=len(result.only_golden),
            only_t=len(result.only_target),
        )
    )
    Path(path).write_text(html)
