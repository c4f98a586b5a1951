"""Pairs the records of a golden and a target dump, measures each pair, and finds the first
divergent op: the earliest record, in execution order, whose output fails while its inputs pass."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from typing import Any

import torch

from accdump import ops
from accdump.diff.metrics import (
    PairMetrics,
    Thresholds,
    Verdict,
    from_pair_metrics,
    integer_stats_difference,
    integer_tensor_difference,
    is_integer,
    stats_metrics,
    tensor_metrics,
    verdict_of,
    worst_rows,
)
from accdump.diff.prefetch import WORKERS, Job, Prefetcher
from accdump.diff.result import CompareResult, Divergence, Pair
from accdump.diff.rules import RenameRules
from accdump.diff.streaming import Staging, streamable, streamed_row_cosine
from accdump.diff.structure import align_by_structure
from accdump.diff.unshard import UnshardedDump, UnshardRules
from accdump.store import Dump, Record, Role, load

Key = tuple[int, int, str, int, int, str]

_LAYER = re.compile(r"(^|\.)layers?\.(\d+)$")


def _key(r: Record, name: str | None = None) -> Key:
    return (r.rank, r.step, r.name if name is None else name, r.call, int(r.role), r.arg)


def _enclosing(a: str, b: str) -> str:
    """The innermost module containing both names (op paths 'mod/op.i' count as inside 'mod')."""
    pa = a.split("/")[0].split(".") if a else []
    pb = b.split("/")[0].split(".") if b else []
    common = []
    for x, y in zip(pa, pb, strict=False):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def _first_token_diff(golden: Dump, target: Dump, steps: Iterable[int]) -> dict[str, Any] | None:
    g_tok = {(r.rank, r.step): r for r in golden.records(role=Role.TOKENS) if r.has_tensor}
    t_tok = {(r.rank, r.step): r for r in target.records(role=Role.TOKENS) if r.has_tensor}
    for key in sorted(set(g_tok) & set(t_tok), key=lambda k: (k[1], k[0])):
        if key[1] not in steps:
            continue
        a, b = golden.tensor(g_tok[key]).reshape(-1), target.tensor(t_tok[key]).reshape(-1)
        if a.shape != b.shape or not torch.equal(a, b):
            n = min(a.numel(), b.numel())
            diff = (a[:n] != b[:n]).nonzero()
            pos = int(diff[0]) if diff.numel() else n
            return {
                "rank": key[0],
                "step": key[1],
                "position": pos,
                "golden_token": int(a[pos]) if pos < a.numel() else None,
                "target_token": int(b[pos]) if pos < b.numel() else None,
            }
    return None


def compare(
    golden: str | os.PathLike[str] | Dump,
    target: str | os.PathLike[str] | Dump,
    *,
    rules: RenameRules | None = None,
    thresholds: Thresholds | None = None,
    device: str | None = None,
    progress: Any = None,
    structural: bool = True,
    unshard: UnshardRules | None = None,
) -> CompareResult:
    """Aligns `target` with `golden` and finds the first divergence; see CompareResult.

    Records are paired by (rank, step, name, call, role, arg) after `rules`; with `structural`,
    records left unpaired are then aligned by execution order and structure (module class or op,
    role, shape), as when the target is a re-implementation with other names."""
    gd = golden if isinstance(golden, Dump) else load(golden)
    td: Any = target if isinstance(target, Dump) else load(target)
    unsharded = None
    if len(gd.ranks) == 1 and len(td.ranks) > 1:  # TP=1 golden vs TP=N target: put shards together
        td = unsharded = UnshardedDump(td, gd, unshard)
    rules = rules or RenameRules()
    th = thresholds or Thresholds()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    staging = Staging(torch.device(device))

    g_steps, t_steps = set(gd.steps()), set(td.steps())
    common_steps = g_steps & t_steps
    steps_note = f"{len(common_steps)} common steps"
    if g_steps != t_steps:
        steps_note += (
            f" (golden has {len(g_steps)}, target {len(t_steps)}; only the common ones are compared)"
        )

    token_diff = _first_token_diff(gd, td, common_steps)
    golden_by_key = {_key(r): r for r in gd.records() if r.step in common_steps and r.role != Role.TOKENS}
    matched: set[Key] = set()
    by_name: list[tuple[Record, Record]] = []
    only_target: list[Record] = []
    target_records = [r for r in td.records() if r.step in common_steps and r.role != Role.TOKENS]
    for t in target_records:
        key = _key(t, rules.apply(t.name))
        g = golden_by_key.get(key)
        if g is None:
            only_target.append(t)
            continue
        matched.add(key)
        by_name.append((g, t))
    only_golden = [r for k, r in golden_by_key.items() if k not in matched]
    # Structure decides only when names mostly fail to pair (a re-implementation): where names do
    # pair, records left over on each side are genuinely one-sided and are listed as such.
    names_differ = len(matched) < 0.5 * max(1, len(target_records))
    by_structure: list[tuple[Record, Record, float]] = []
    if structural and names_differ and only_golden and only_target:
        by_structure, only_golden, only_target = align_by_structure(only_golden, only_target)
    # tensors are read ahead on worker threads; an unsharded target merges shards one record at a
    # time and is read in turn
    workers = WORKERS if isinstance(gd, Dump) and isinstance(td, Dump) else 0
    to_measure = by_name + [(g, t) for g, t, _ in by_structure]
    with Prefetcher(gd, td, staging.device, staging.chunk_bytes, workers) as ahead:
        pairs: list[Pair] = []
        streamed = ahead.metrics([_job(g, t, th) for g, t in to_measure])
        for i, ((g, t), pm) in enumerate(zip(to_measure, streamed, strict=True)):
            if progress is not None:
                progress(i, len(to_measure))
            pairs.append(_measure(gd, td, g, t, th, staging, pm))
    for pair, (_, _, confidence) in zip(pairs[len(by_name) :], by_structure, strict=True):
        pair.note = (pair.note + "; " if pair.note else "") + (
            f"matched by structure (kind, role, shape; confidence {confidence:.2f})"
        )
    pairs.sort(key=lambda p: (p.target.step, p.target.rank, p.target.order))

    limit_step = token_diff["step"] if token_diff else None
    divergence = _first_divergence(pairs, limit_step)
    result = CompareResult(
        str(gd.path), str(td.path), pairs, only_golden, only_target, divergence, token_diff, steps_note
    )
    if unsharded is not None:
        result.steps_note += f"; {unsharded.rule_summary()}"
        result.findings += [d.line() for d in unsharded.disagreements]
    if limit_step is not None:
        result.steps_note += (
            f"; tokens differ from step {limit_step}: later steps see different inputs "
            "and are not searched for divergences"
        )
    result.trajectory = _trajectory(pairs)
    if divergence is not None:
        result.propagates = _propagates(pairs, divergence)
        g, t = divergence.pair.golden, divergence.pair.target
        if g.shape == t.shape and len(g.shape) >= 1 and streamable(g, t):
            divergence.token_cosine = streamed_row_cosine(gd, g, td, t, staging).tolist()
    return result


def _job(g: Record, t: Record, th: Thresholds) -> Job | None:
    """What Prefetcher measures of a pair: its streamed metrics when both tensors stream."""
    if not streamable(g, t):
        return None
    th = th.for_name(t.name)
    return Job(g, t, th.atol, th.rtol)


def _measure(
    gd: Dump,
    td: Dump,
    g: Record,
    t: Record,
    th: Thresholds,
    staging: Staging,
    pm: ops.PairMetrics | None,
) -> Pair:
    """One pair's metrics and verdict; `pm`: its streamed metrics, when both tensors stream (_job)."""
    th = th.for_name(t.name)
    if pm is not None:  # the common case: read piece by piece, ahead, overlapped with the metrics
        counts = (
            (g.stats.nan, t.stats.nan),
            (g.stats.posinf + g.stats.neginf, t.stats.posinf + t.stats.neginf),
        )
        m = from_pair_metrics(pm, *counts)
        verdict = verdict_of(m, th)
        if verdict >= Verdict.SUSPICIOUS and g.shape:
            m.rows_cosine_worst = worst_rows(streamed_row_cosine(gd, g, td, t, staging))
        return Pair(g, t, m, verdict)
    device = str(staging.device)
    # token ids, expert indices, positions, int8 codes: equal or wrong, whatever the float metrics say
    exact = is_integer(g.dtype) and is_integer(t.dtype)
    if g.has_tensor and t.has_tensor:
        a, b = gd.tensor(g), td.tensor(t)
        tm = tensor_metrics(a, b, th, device)
        if tm is None:  # the statistics still say how far apart they are; the verdict stays "mismatch"
            note = f"shapes {list(g.shape)} and {list(t.shape)} do not align"
            return Pair(g, t, stats_metrics(g, t), Verdict.MISMATCH, note)
        if exact:
            return _exact_pair(g, t, tm, integer_tensor_difference(a, b))
        return Pair(g, t, tm, verdict_of(tm, th))
    m = stats_metrics(g, t)
    note = "" if g.shape == t.shape else f"shapes differ: {list(g.shape)} vs {list(t.shape)}"
    if exact:
        return _exact_pair(g, t, m, integer_stats_difference(g, t), note)
    return Pair(g, t, m, verdict_of(m, th), note)


def _exact_pair(g: Record, t: Record, m: PairMetrics, difference: str, note: str = "") -> Pair:
    """An integer pair: broken when `difference` says how the values differ, else passing."""
    verdict = Verdict.BROKEN if difference else Verdict.PASS
    return Pair(g, t, m, verdict, "; ".join(x for x in (note, difference) if x))


def _first_divergence(pairs: list[Pair], limit_step: int | None) -> Divergence | None:
    by_call: dict[tuple[int, int, str, int], list[Pair]] = {}
    for p in pairs:
        t = p.target
        by_call.setdefault((t.rank, t.step, t.name, t.call), []).append(p)
    last_pass: Pair | None = None
    for p in pairs:
        t = p.target
        if limit_step is not None and t.step >= limit_step:
            break
        if last_pass is not None and (last_pass.target.step, last_pass.target.rank) != (t.step, t.rank):
            last_pass = None  # "between X and Y" only within one step of one rank
        if not p.failing:
            if p.verdict == Verdict.PASS:
                last_pass = p
            continue
        inputs = [q for q in by_call[(t.rank, t.step, t.name, t.call)] if q.target.role == Role.INPUT]
        if t.role == Role.OUTPUT and not any(q.failing for q in inputs):
            if not inputs:
                why = "no inputs were recorded for it"
            elif any(q.verdict == Verdict.SUSPICIOUS for q in inputs):
                why = "its inputs pass (some only as 'suspicious')"
            else:
                why = "its inputs pass"
            return Divergence(p, inputs, t.name or "<root>", f"The output fails while {why}.", last_pass)
        before = last_pass.target.name if last_pass else "the start of the step"
        region = _enclosing(last_pass.target.name, t.name) if last_pass else ""
        where = region or "<root>"
        if t.role == Role.INPUT:
            why = (
                f"Its input already fails: the error comes from code in {where} that runs between "
                f"{before} and {t.name or '<root>'} and that no recorded module covers."
            )
        else:
            why = f"The error arises in {where} between {before} and {t.name or '<root>'}."
        return Divergence(p, inputs, where, why, last_pass)
    return None


def _trajectory(pairs: list[Pair]) -> list[dict[str, Any]]:
    """The residual stream, layer by layer: metrics of each decoder layer's first output."""
    out = []
    for p in pairs:
        t = p.target
        m = _LAYER.search(t.name)
        if m and t.role == Role.OUTPUT and t.arg in ("0", "0.0") and p.metrics is not None:
            out.append(
                {
                    "rank": t.rank,
                    "step": t.step,
                    "layer": int(m.group(2)),
                    "name": t.name,
                    "cosine": p.metrics.cosine,
                    "norm_ratio": p.metrics.norm_ratio,
                    "rel_l2": p.metrics.rel_l2,
                    "verdict": p.verdict.label,
                }
            )
    return out


def _propagates(pairs: list[Pair], d: Divergence) -> bool:
    """True when the last compared output of the divergence's step still fails."""
    step, rank = d.pair.target.step, d.pair.target.rank
    outputs = [
        p for p in pairs if p.target.step == step and p.target.rank == rank and p.target.role == Role.OUTPUT
    ]
    return bool(outputs) and outputs[-1].failing


__all__ = ["CompareResult", "Divergence", "Pair", "Thresholds", "compare", "math"]
