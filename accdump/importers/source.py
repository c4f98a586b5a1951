"""The shape every import source has: it scans a folder on construction (so layout errors and
unmatched files show before anything is written), then yields ForeignRecords grouped by
(rank, step), loading one file at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from accdump.errors import SourceFormatError
from accdump.importers.paths import walk_files
from accdump.importers.records import ForeignRecord, ImportNotes
from accdump.store.schema import Role

Progress = Callable[[int, int], None]  # (units done, units in all)
NO_ORDER = (
    "{tool} records no execution order: records are in module-path order (compare reports the first "
    "failing record in this order); --order-like GOLDEN takes the order of a recording of the reference run"
)


@dataclass(frozen=True)
class SourceOptions:
    """What every source is told: --rank, --dtype, --strict, and the output folder to leave alone."""

    rank: int | None = None
    dtype: torch.dtype | None = None
    strict: bool = False
    exclude: Path | None = None  # the import's output, when it lies inside the source


class ImportSource:
    """Base of the sources: `records()` yields what `write_dump` writes."""

    name = "source"
    ordered = True  # the tool records execution order; False: module-path order until reorder()
    mode = "tensor"  # the run attribute: "tensor", or "stats" for statistics-only sources
    level = "module"

    def __init__(self, root: Path, opts: SourceOptions):
        self.root = root
        self.rank = opts.rank
        self.dtype = opts.dtype
        self.strict = opts.strict
        self.exclude = opts.exclude
        self.notes = ImportNotes()
        self.world_size = 1
        self.units = 0  # work units (files) for a progress bar

    def walk(self, root: Path | None = None) -> Iterator[Path]:
        """The files under `root` (default: the source folder), as paths.walk_files gives them."""
        return walk_files(self.root if root is None else root, self.notes, self.exclude)

    def records(self, progress: Progress | None = None) -> Iterator[ForeignRecord]:
        raise NotImplementedError

    def reorder(self, position: Callable[[str, Role], float], origin: str = "--order-like") -> None:
        """Takes execution order from `position(name, role)` (see order.reference_order); only
        sources whose tool records no order use it. `origin` names the order's recording in the notes."""
        self.notes.note(f"{self.name} dumps record their execution order: --order-like is not needed")

    def check_strict(self) -> None:
        """With --strict, files left out are an error (raised before anything is written)."""
        if self.strict and (self.notes.unmatched or self.notes.skipped):
            left = self.notes.unmatched + [f"{f} ({why})" for f, why in self.notes.skipped]
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            raise SourceFormatError(
                f"--strict: {len(left)} file(s) in {self.root} would be left out: {shown}"
            )

    def skip(self, what: str, why: str) -> None:
        """Leaves `what` out with a reason; fatal with --strict."""
        if self.strict:
            raise SourceFormatError(f"--strict: {what}: {why}")
        self.notes.skipped.append((what, why))

    def wants_rank(self, rank: int) -> bool:
        return self.rank is None or rank == self.rank
