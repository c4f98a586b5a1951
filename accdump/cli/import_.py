"""`accdump import`: what was imported (the answer first), the dtypes assumed, what was left out;
the same after a compare that imported a side on the fly."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from accdump.importers import PRESETS, ImportResult
from accdump.importers.direct import Side

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


def _what(result: ImportResult) -> str:
    s = result.summary
    what = f"{s.tensors} tensors" + (f", {s.stats_only} statistics only" if s.stats_only else "")
    return f"{s.records} records ({what}) from {result.source} {result.src}"


def print_import(result: ImportResult, console: Console) -> None:
    s = result.summary
    steps = sorted(s.steps)
    step_text = f"steps {steps[0]}..{steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
    console.print(
        f"[bold]Imported[/bold] {_what(result)} "
        f"into {s.out}: ranks {sorted(s.ranks)}, {step_text}, {s.segments} segments, "
        f"{s.nbytes / 2**20:.1f} MiB",
        highlight=False,
    )
    _print_notes(result, console)
    if result.rules is not None:
        console.print(
            f"Names differ from Hugging Face module paths? compare with --rename {result.rules}",
            highlight=False,
        )


def print_imported(role: str, side: Side, console: Console, rename_given: bool) -> None:
    """What `compare --golden-format / --target-format` imported on the fly, after the comparison."""
    result = side.imported
    if result is None:
        return
    where = f"kept in {side.path}" if side.kept else "through a temporary dump, removed"
    console.print(
        f"{role}: imported {_what(result)} ({where})", markup=False, highlight=False, soft_wrap=True
    )
    _print_notes(result, console, f"--{role}-dtype")
    if result.rules is not None and role == "target" and not rename_given:
        console.print(f"Names differ from the golden's? add --rename {result.rules}", highlight=False)


def _print_notes(result: ImportResult, console: Console, dtype_option: str = "--dtype") -> None:
    n = result.notes
    if n.dtypes:
        table = Table("found", "stored as", "tensors", "how")
        for (found, stored, how), count in sorted(n.dtypes.items()):
            table.add_row(found, stored, str(count), how)
        console.print(table)
        if any(found.endswith("(.npy)") and found.startswith("float32") for found, _, _ in n.dtypes):
            console.print(
                ".npy cannot hold bfloat16: float32 arrays were taken as float32. Files of raw 16-bit "
                f"values need {dtype_option} bfloat16."
            )
    for note in n.notes:
        console.print(f"note: {note}", highlight=False)
    _listed(console, "not matched, not imported", n.unmatched)
    _listed(console, "left out", [f"{what}: {why}" for what, why in n.skipped])
