"""What every import source yields: ForeignRecord, one tensor (or its statistics) of a foreign dump,
and the notes a source keeps for the summary (dtypes it assumed, files it skipped).

Statistics-only records (a tool that kept only a few numbers per tensor) fill what is known and
leave the rest NaN; the zero count, an integer column, is -1 when unknown (docs/format.md).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from accdump.ops import STATS_FIELDS
from accdump.store.schema import Role

_COUNT_FIELDS = ("count", "nan", "posinf", "neginf", "zeros")


@dataclass
class ForeignRecord:
    """One tensor of a foreign dump: where it belongs in an accdump dump, and its data.

    Either `tensor` is set (the full tensor, on the CPU), or `stats` holds the statistics the
    tool recorded (TensorStats field names; missing ones are unknown) with `dtype` and `shape`."""

    rank: int
    step: int
    name: str
    call: int
    role: Role
    arg: str
    tensor: torch.Tensor | None = None
    kind: str = ""
    stats: dict[str, float] | None = None
    dtype: str = ""
    shape: tuple[int, ...] = ()
    source: str = ""  # the file it came from, for messages


def stats_vector(stats: dict[str, float], shape: tuple[int, ...]) -> list[float]:
    """The 13 statistics of a stats-only record: known values, NaN for unknown floats, count from
    the shape, NaN/Inf counts 0 unless given, zero count -1 (unknown) unless given."""
    known = dict(stats)
    known.setdefault("count", float(math.prod(shape)))
    for f in ("nan", "posinf", "neginf"):
        known.setdefault(f, 0.0)
    known.setdefault("zeros", -1.0)
    return [float(known.get(f, math.nan)) for f in STATS_FIELDS]


@dataclass
class ImportNotes:
    """What a source tells the user at the end: dtypes assumed, files skipped and why."""

    dtypes: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (found, stored, how)
    unmatched: list[str] = field(default_factory=list)  # files no pattern/preset rule matched
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or record, why)
    notes: list[str] = field(default_factory=list)  # one-line facts about the import

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def dtype(self, found: str, stored: str, how: str) -> None:
        self.dtypes[(found, stored, how)] += 1


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting 'layers.2' before 'layers.10'."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p)


def tree_order_key(name: str, role: Role, arg: str) -> tuple[object, ...]:
    """Execution order guessed from module paths when a tool kept none: a module's inputs, then
    its submodules (in natural order), then its outputs."""
    parts: list[object] = [(1, natural_key(p)) for p in name.split(".")] if name else []
    phase = (0,) if role == Role.INPUT else (2,)  # before / after every child component (1, ...)
    return (*parts, phase, natural_key(arg))


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
