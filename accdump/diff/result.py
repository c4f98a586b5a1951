"""What a comparison found: the measured pairs, the first divergence and the whole result, with
their dict forms (the JSON and CSV reports are built from them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from accdump.diff.metrics import PairMetrics, Verdict
from accdump.store import Record

PAIR_COLUMNS = (
    "rank",
    "step",
    "order",
    "name",
    "golden_name",
    "call",
    "role",
    "arg",
    "dtype_golden",
    "dtype_target",
    "shape",
    "verdict",
    "note",
)


@dataclass(slots=True)
class Pair:
    golden: Record
    target: Record
    metrics: PairMetrics | None
    verdict: Verdict
    note: str = ""

    @property
    def failing(self) -> bool:
        return self.verdict >= Verdict.BROKEN

    def row(self) -> dict[str, Any]:
        t = self.target
        return {
            "rank": t.rank,
            "step": t.step,
            "order": t.order,
            "name": t.name,
            "golden_name": self.golden.name,
            "call": t.call,
            "role": t.role.name.lower(),
            "arg": t.arg,
            "dtype_golden": self.golden.dtype,
            "dtype_target": t.dtype,
            "shape": list(t.shape),
            "verdict": self.verdict.label,
            "note": self.note,
            **(self.metrics.to_dict() if self.metrics else {}),
        }


@dataclass
class Divergence:
    pair: Pair
    inputs: list[Pair]
    attributed_to: str  # the module (or code region) the error is attributed to
    explanation: str
    last_passing: Pair | None
    token_cosine: list[float] = field(default_factory=list)  # per row, when both tensors were stored

    def to_dict(self) -> dict[str, Any]:
        t = self.pair.target
        return {
            "rank": t.rank,
            "step": t.step,
            "name": t.name,
            "golden_name": self.pair.golden.name,
            "call": t.call,
            "role": t.role.name.lower(),
            "arg": t.arg,
            "verdict": self.pair.verdict.label,
            "metrics": self.pair.metrics.to_dict() if self.pair.metrics else None,
            "inputs": [p.row() for p in self.inputs],
            "attributed_to": self.attributed_to,
            "explanation": self.explanation,
            "last_passing": self.last_passing.target.name if self.last_passing else None,
        }


@dataclass
class CompareResult:
    golden: str
    target: str
    pairs: list[Pair]
    only_golden: list[Record]
    only_target: list[Record]
    first_divergence: Divergence | None
    first_token_diff: dict[str, Any] | None
    steps_note: str
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    propagates: bool | None = None
    findings: list[str] = field(default_factory=list)  # e.g. ranks disagreeing on replicated tensors

    @property
    def exit_code(self) -> int:
        return 1 if self.first_divergence is not None or self.first_token_diff is not None else 0

    def verdict_line(self) -> str:
        d = self.first_divergence
        tok = self.first_token_diff
        if d is None:
            if tok is not None:
                return (
                    f"DIVERGED: generated tokens differ from step {tok['step']} on, but no record "
                    "failed its thresholds before that step"
                )
            return f"OK: no divergence in {len(self.pairs)} compared records ({self.steps_note})"
        p, m = d.pair, d.pair.metrics
        what = []
        if m is not None:
            if m.cosine is not None:
                what.append(f"cosine {m.cosine:.4f}")
            if m.norm_ratio is not None:
                what.append(f"norm ratio {m.norm_ratio:.3f}")
            if m.rel_l2 is not None:
                what.append(f"rel L2 {m.rel_l2:.3g}")
            if m.std_rel_diff is not None:
                what.append(f"std rel diff {m.std_rel_diff:.3g}")
            if m.absmax_rel_diff is not None:
                what.append(f"absmax rel diff {m.absmax_rel_diff:.3g}")
            if m.mean_diff is not None:
                what.append(f"mean shift {m.mean_diff:.3g} std")
            if m.new_nan or m.new_inf:
                what.append(f"{m.new_nan} new NaN, {m.new_inf} new Inf")
        if p.note:
            what.append(p.note)
        golden_name = "" if p.golden.name == p.target.name else f" (golden: {p.golden.name or '<root>'})"
        return (
            f"DIVERGED at rank {p.target.rank}, step {p.target.step}: {d.attributed_to}{golden_name} "
            f"({p.verdict.label}; {', '.join(what)}). {d.explanation}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "golden": self.golden,
            "target": self.target,
            "first_divergence": self.first_divergence.to_dict() if self.first_divergence else None,
            "first_token_diff": self.first_token_diff,
            "propagates": self.propagates,
            "steps": self.steps_note,
            "trajectory": self.trajectory,
            "only_golden": [rec_id(r) for r in self.only_golden],
            "only_target": [rec_id(r) for r in self.only_target],
            "findings": self.findings,
            "pairs": [p.row() for p in self.pairs],
        }


def rec_id(r: Record) -> dict[str, Any]:
    return {
        "rank": r.rank,
        "step": r.step,
        "name": r.name,
        "call": r.call,
        "role": r.role.name.lower(),
        "arg": r.arg,
    }
