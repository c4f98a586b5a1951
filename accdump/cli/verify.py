"""`accdump verify`: the table of quantized layers and their verdicts."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from accdump.diff.report import finite_json, shown
from accdump.quant.verify_dump import VerifyRun

_STYLE = {"pass": "green", "suspicious": "yellow", "fail": "bold red"}


def _num(v: float, fmt: str) -> str:
    return "nan" if math.isnan(v) else format(v, fmt)


def print_run(run: VerifyRun, console: Console) -> None:
    failed = run.failed
    if not run.checks:
        console.print("[bold]NOTHING CHECKED[/bold]: no recorded quantized layer could be verified")
    elif failed:
        first = failed[0]
        what = first.check.diagnosis.description if first.check.diagnosis else "no known hypothesis matches"
        console.print(
            f"[bold red]FAIL[/bold red]: {len(failed)} of {len(run.checks)} layer calls disagree with the "
            f"reference; first: {shown(first.check.name)} (step {first.step}): {shown(what)}"
        )
    else:
        console.print(f"[bold green]OK[/bold green]: {len(run.checks)} layer calls match the reference")
    if run.checks:
        table = Table(
            "layer",
            "rank",
            "step",
            "format",
            "judged against",
            "cosine",
            "rel err",
            "norm ratio",
            "NaN",
            "floor",
            "verdict",
            "diagnosis",
        )
        for c in run.checks:
            k = c.check
            a = k.agreement
            diag = ""
            if k.diagnosis is not None:
                diag = k.diagnosis.description + (
                    f" (or {', '.join(k.diagnosis.also)})" if k.diagnosis.also else ""
                )
            elif not k.passed:
                diag = "no known hypothesis matches"
            table.add_row(  # layer names come from the checkpoint and the dump: not markup
                shown(k.name),
                str(c.rank),
                str(c.step),
                shown(k.format),
                shown(k.activation),
                _num(a.cosine, ".6f"),
                _num(a.rel_l2, ".3g"),
                _num(a.norm_ratio, ".4g"),
                str(k.target_nan),
                f"{k.noise_floor:.3g}",
                f"[{_STYLE[k.verdict]}]{k.verdict}[/]",
                shown(diag),
            )
        console.print(table)
    for u in run.unrecognised:
        console.print(f"[yellow]not recognised[/yellow]: {shown(u.reason)}")
    for note in run.notes:
        console.print(f"[dim]skipped[/dim]: {shown(note)}")


def write_json(run: VerifyRun, path: str | Path) -> None:
    payload = {
        "checks": [
            {"rank": c.rank, "step": c.step, "call": c.call, "record": c.record_name, **asdict(c.check)}
            for c in run.checks
        ],
        "notes": run.notes,
        "unrecognised": [asdict(u) for u in run.unrecognised],
        "exit_code": run.exit_code,
    }
    Path(path).write_text(json.dumps(finite_json(payload), indent=2, default=str, allow_nan=False))
