"""`accdump import`: dumps written by other tools (msProbe, SGLang's dumper, TensorRT-LLM, or any
folder of tensor files with a filename pattern) turned into accdump dumps, so show, compare and
verify work on them unchanged.

    result = import_dump("msprobe_out/", "dumps/target", preset="msprobe")

Each source yields ForeignRecords grouped by (rank, step); write_dump writes them with accdump's
own SegmentWriter, one step's tensors in memory at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from accdump.diff.rules import RenameRules
from accdump.errors import SourceFormatError
from accdump.importers.order import Position, reference_order
from accdump.importers.paths import source_root
from accdump.importers.pattern import PatternSource
from accdump.importers.presets import PRESETS, Preset, detect
from accdump.importers.records import ForeignRecord, ImportNotes
from accdump.importers.source import ImportSource, Progress, SourceOptions
from accdump.importers.tensorfiles import torch_dtype
from accdump.importers.trtllm import TrtllmTorchSource
from accdump.importers.write import WriteSummary, write_dump


@dataclass
class ImportResult:
    """What an import wrote and what the user should know about it."""

    source: str  # preset name, or "pattern"
    src: Path
    summary: WriteSummary
    notes: ImportNotes
    rules: Path | None  # renaming rules shipped for the preset's names


def open_source(
    src: str | os.PathLike[str],
    *,
    preset: str | None = None,
    pattern: str | None = None,
    rank: int | None = None,
    dtype: str | None = None,
    strict: bool = False,
    calls_per_step: int | None = None,
    exclude: str | os.PathLike[str] | None = None,
) -> tuple[ImportSource, Preset | None]:
    """The source reading `src`: by pattern, by preset, or by the preset its layout shows."""
    root = source_root(src)
    if preset and pattern:
        raise SourceFormatError("give either --preset or --pattern, not both")
    opts = SourceOptions(
        rank, torch_dtype(dtype) if dtype else None, strict, Path(exclude) if exclude else None
    )
    if pattern:
        return PatternSource(root, pattern, opts), None
    if preset is None:
        found = detect(root)
        if len(found) != 1:
            why = "matches several layouts: " + ", ".join(found) if found else "has no layout accdump knows"
            raise SourceFormatError(
                f"{root} {why}: pass --preset ({', '.join(PRESETS)}) or --pattern (see --list-presets)"
            )
        preset = found[0]
    chosen = PRESETS.get(preset)
    if chosen is None:
        raise SourceFormatError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    if chosen.source is TrtllmTorchSource:
        return TrtllmTorchSource(root, opts, calls_per_step), chosen
    return chosen.source(root, opts), chosen


def import_dump(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    preset: str | None = None,
    pattern: str | None = None,
    rank: int | None = None,
    dtype: str | None = None,
    strict: bool = False,
    overwrite: bool = False,
    calls_per_step: int | None = None,
    order_like: str | os.PathLike[str] | None = None,
    rename: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Reads the foreign dump `src` and writes it as the accdump dump `out`; see ImportResult.

    `order_like`: an accdump recording of the reference run whose execution order orderless sources
    take, names matched after `rename` (default: the preset's shipped rules)."""
    source, chosen = open_source(
        src,
        preset=preset,
        pattern=pattern,
        rank=rank,
        dtype=dtype,
        strict=strict,
        calls_per_step=calls_per_step,
        exclude=out,
    )
    if order_like is not None:
        source.reorder(order_of(order_like, rename, chosen))
    return write_source(source, chosen, src, out, overwrite=overwrite, progress=progress)


def order_of(
    recording: str | os.PathLike[str], rename: str | os.PathLike[str] | None, chosen: Preset | None
) -> Position:
    """The execution order of `recording`, names matched after `rename` (default: the preset's rules)."""
    rules_path = rename or (chosen.rules_path if chosen else None)
    return reference_order(recording, RenameRules.load(Path(rules_path)) if rules_path else None)


def write_source(
    source: ImportSource,
    chosen: Preset | None,
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Writes what the opened `source` (of the folder `src`) holds as the accdump dump `out`."""
    pattern = source.pattern if isinstance(source, PatternSource) else None
    metadata = {"imported_from": source.name, "source": str(src), **({"pattern": pattern} if pattern else {})}
    summary = write_dump(
        source.records(progress),
        out,
        world_size=source.world_size,
        mode=source.mode,
        level=source.level,
        metadata=metadata,
        overwrite=overwrite,
        notes=source.notes,
    )
    return ImportResult(source.name, Path(src), summary, source.notes, chosen.rules_path if chosen else None)


__all__ = [
    "PRESETS",
    "ForeignRecord",
    "ImportNotes",
    "ImportResult",
    "ImportSource",
    "WriteSummary",
    "import_dump",
    "open_source",
    "order_of",
    "write_dump",
    "write_source",
]
