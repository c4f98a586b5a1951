"""Pairing by structure, for records whose names do not pair (a re-implementation): the two
execution orders are sequence-aligned on each record's kind, role, argument and shape."""

from __future__ import annotations

from difflib import SequenceMatcher

from accdump.store import Record


def _signature(r: Record) -> str:
    return f"{r.kind}|{int(r.role)}|{r.arg}|{'x'.join(map(str, r.shape))}"


def align_by_structure(
    golden: list[Record], target: list[Record]
) -> tuple[list[tuple[Record, Record, float]], list[Record], list[Record]]:
    """Sequence-aligns unpaired records per (rank, step) on their structure: returns the pairs
    (golden, target, confidence) and the records still unpaired on each side. Confidence is the
    share of the step's unpaired records that the alignment matched."""
    groups: dict[tuple[int, int], tuple[list[Record], list[Record]]] = {}
    for r in golden:
        groups.setdefault((r.rank, r.step), ([], []))[0].append(r)
    for r in target:
        groups.setdefault((r.rank, r.step), ([], []))[1].append(r)
    pairs: list[tuple[Record, Record, float]] = []
    left_g: list[Record] = []
    left_t: list[Record] = []
    for gs, ts in groups.values():
        gs.sort(key=lambda r: r.order)
        ts.sort(key=lambda r: r.order)
        matcher = SequenceMatcher(
            None, [_signature(r) for r in gs], [_signature(r) for r in ts], autojunk=False
        )
        confidence = matcher.ratio()
        used_g, used_t = set(), set()
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                pairs.append((gs[block.a + k], ts[block.b + k], confidence))
                used_g.add(block.a + k)
                used_t.add(block.b + k)
        left_g += [r for i, r in enumerate(gs) if i not in used_g]
        left_t += [r for i, r in enumerate(ts) if i not in used_t]
    return pairs, left_g, left_t
