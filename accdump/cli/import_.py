"""`accdump import`: what was imported (the answer first), the dtypes assumed, what was left out."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from accdump.importers import PRESETS, ImportResult

_SHOWN = 10


def print_presets(console: Console) -> None:
    table = Table("preset", "tool", "layout", "rename rules")
    for p in PRESETS.values():
        table.add_row(p.name, p.tool, p.layout, str(p.rules_path) if p.rules_path else "-")
    console.print(table)
    console.print(
        "Or any folder of .pt / .npy / .npz / .safetensors files with --pattern, e.g. "
        "'PP_{pp}/TP_{rank}/iteration_{step}/{name}.npy' (fields {step} {rank} {name} {role} {arg} {call}; "
        "other {fields} are ignored)."
    )


def _listed(console: Console, title: str, items: list[str]) -> None:
    if not items:
        return
    console.print(f"{title} ({len(items)}):")
    for item in items[:_SHOWN]:
        console.print(f"  {item}", markup=False, highlight=False)
    if len(items) > _SHOWN:
        console.print(f"  ... and {len(items) - _SHOWN} more")


def print_import(result: ImportResult, console: Console) -> None:
    s, n = result.summary, result.notes
    steps = sorted(s.steps)
    step_text = f"steps {steps[0]}..{steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
    what = f"{s.tensors} tensors" + (f", {s.stats_only} statistics only" if s.stats_only else "")
    console.print(
        f"[bold]Imported[/bold] {s.records} records ({what}) from {result.source} {result.src} "
        f"into {s.out}: ranks {sorted(s.ranks)}, {step_text}, {s.segments} segments, "
        f"{s.nbytes / 2**20:.1f} MiB",
        highlight=False,
    )
    if n.dtypes:
        table = Table("found", "stored as", "tensors", "how")
        for (found, stored, how), count in sorted(n.dtypes.items()):
            table.add_row(found, stored, str(count), how)
        console.print(table)
        if any(found.endswith("(.npy)") and found.startswith("float32") for found, _, _ in n.dtypes):
            console.print(
                ".npy cannot hold bfloat16: float32 arrays were taken as float32. Files of raw 16-bit "
                "values need --dtype bfloat16."
            )
    for note in n.notes:
        console.print(f"note: {note}", highlight=False)
    _listed(console, "not matched, not imported", n.unmatched)
    _listed(console, "left out", [f"{what}: {why}" for what, why in n.skipped])
    if result.rules is not None:
        console.print(
            f"Names differ from Hugging Face module paths? compare with --rename {result.rules}",
            highlight=False,
        )
