"""Execution order for sources that record none (TensorRT-LLM's .npy tree, pattern folders), taken
from an accdump recording of the reference run: compare judges records in the target's order, and
module-path order would put `lm_head` before `transformer.layers.0`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from accdump.diff.rules import RenameRules
from accdump.store import Role, load

Position = Callable[[str, Role], float]


def reference_order(dump: str | os.PathLike[str], rules: RenameRules | None = None) -> Position:
    """position(name, role) of records in the first step of `dump` after renaming the name with
    `rules`: the record's own order, else just before its nearest recorded enclosing module's
    output, else +inf (after everything known)."""
    ref = load(dump)
    rules = rules or RenameRules()
    rank = ref.ranks[0]
    steps = [s for s in ref.steps(rank) if s >= 0]
    first: dict[tuple[str, int], int] = {}
    for r in ref.records(rank=rank, step=steps[0] if steps else None):
        first.setdefault((r.name, int(r.role)), r.order)

    def position(name: str, role: Role) -> float:
        renamed = rules.apply(name)
        own = first.get((renamed, int(role)), first.get((renamed, int(Role.OUTPUT))))
        if own is not None:
            return float(own) - (0.5 if role == Role.INPUT and (renamed, int(role)) not in first else 0.0)
        parts = renamed.split(".")
        for k in range(len(parts) - 1, 0, -1):
            parent = first.get((".".join(parts[:k]), int(Role.OUTPUT)))
            if parent is not None:
                return parent - 0.5
        return math.inf

    return position
