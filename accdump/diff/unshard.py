"""A tensor-parallel target seen as one rank: each record's shards put back together, so that a
TP=1 golden run can be compared with a TP=N target run.

Per record (same step, name, call, role and argument on every rank), the rule is found from the
shapes where that is unambiguous: shards 1/N of the golden size along one dimension are
concatenated there (column-parallel outputs); shards of the golden shape are one replicated tensor
(rank 0's is used, and ranks that disagree are reported as a finding of their own: a missing
all-reduce or a rank-dependent bug); the inputs of all_reduce / reduce_scatter are partial sums and
are added up. A rules file overrides this per name glob (YAML/JSON list of
`{glob: "*.o_proj", unshard: sum | replicate | concat, dim: -1, role: output}`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accdump import ops
from accdump.diff.rules import RulesError, read_structured
from accdump.store import Dump, Record, Role

RULES = ("sum", "replicate", "concat")
_PARTIAL_COLLECTIVES = ("/all_reduce.", "/reduce_scatter_tensor.", "/reduce_scatter.")


@dataclass(frozen=True)
class UnshardRule:
    glob: str
    how: str
    dim: int = -1
    role: str | None = None  # input / output / None for both


class UnshardRules:
    """Per-name-glob unshard rules; the last matching rule wins."""

    def __init__(self, rules: list[UnshardRule] | None = None):
        self.rules = rules or []

    @classmethod
    def load(cls, path: str | Path) -> UnshardRules:
        p = Path(path)
        data = read_structured(p)
        if not isinstance(data, list):
            raise RulesError(f"{p}: expected a list of {{glob, unshard, dim, role}} rules")
        rules = []
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "glob" not in item or item.get("unshard") not in RULES:
                raise RulesError(f"{p}: rule {i} needs a glob and unshard: one of {', '.join(RULES)}")
            role = item.get("role")
            if role not in (None, "input", "output"):
                raise RulesError(f"{p}: rule {i}: role must be input or output, got {role!r}")
            try:
                dim = int(item.get("dim", -1))
            except (TypeError, ValueError):
                raise RulesError(f"{p}: rule {i}: dim must be an integer") from None
            rules.append(UnshardRule(str(item["glob"]), item["unshard"], dim, role))
        return cls(rules)

    def for_record(self, rec: Record) -> UnshardRule | None:
        chosen = None
        role = rec.role.name.lower()
        for r in self.rules:
            if fnmatch.fnmatchcase(rec.name, r.glob) and r.role in (None, role):
                chosen = r
        return chosen


@dataclass(frozen=True)
class RankDisagreement:
    """Ranks holding different values of a tensor that should be replicated."""

    step: int
    name: str
    role: str
    arg: str
    rank: int  # the first rank that differs from rank 0
    cosine: float | None
    rel_diff: float

    def line(self) -> str:
        cos = f"cosine {self.cosine:.6f} vs rank 0, " if self.cosine is not None else ""
        return (
            f"ranks disagree on {self.name} ({self.role} {self.arg}, step {self.step}): rank {self.rank} "
            f"differs from rank 0 ({cos}relative difference {self.rel_diff:.3g}); expected identical "
            "(replicated): a missing all-reduce, non-determinism, or a rank-dependent bug"
        )


def _concat_dim(golden: tuple[int, ...], shard: tuple[int, ...], n: int) -> int | None:
    if len(golden) != len(shard):
        return None
    diff = [d for d, (g, s) in enumerate(zip(golden, shard, strict=True)) if g != s]
    if len(diff) == 1 and shard[diff[0]] * n == golden[diff[0]]:
        return diff[0]
    return None


class UnshardedDump:
    """The records of a multi-rank dump merged into rank 0 (the parts of Dump that compare uses)."""

    def __init__(self, target: Dump, golden: Dump, rules: UnshardRules | None = None):
        self.inner, self.path = target, target.path
        self.world = len(target.ranks)
        self.rules = rules or UnshardRules()
        self.disagreements: list[RankDisagreement] = []
        self.applied: dict[str, int] = {}
        golden_shapes = {(r.step, r.name, r.call, int(r.role), r.arg): r.shape for r in golden.records()}
        groups: dict[tuple[int, str, int, int, str], dict[int, Record]] = {}
        for r in target.records():
            groups.setdefault((r.step, r.name, r.call, int(r.role), r.arg), {})[r.rank] = r
        self._merged: list[Record] = []
        self._how: dict[int, tuple[str, int, list[Record]]] = {}  # id(merged record) -> rule
        self._cache: dict[int, torch.Tensor] = {}
        for key, shards in groups.items():
            first = shards[min(shards)]
            if len(shards) != self.world:  # recorded on some ranks only: kept as it is
                self._merged.append(dataclasses.replace(first, rank=0))
                continue
            how, dim = self._rule(first, golden_shapes.get(key), shards)
            ordered = [shards[r] for r in sorted(shards)]
            merged = self._merge_record(first, ordered, how, dim)
            self._how[id(merged)] = (how, dim, ordered)
            label = f"concat dim {dim}" if how == "concat" else how
            self.applied[label] = self.applied.get(label, 0) + 1
            self._merged.append(merged)
            if how == "replicate":
                self._check_replicas(ordered)
        self._merged.sort(key=lambda r: (r.step, r.order))

    def _rule(
        self, rec: Record, golden: tuple[int, ...] | None, shards: dict[int, Record]
    ) -> tuple[str, int]:
        explicit = self.rules.for_record(rec)
        if explicit is not None:
            return explicit.how, explicit.dim % max(1, len(rec.shape)) if rec.shape else 0
        if rec.role == Role.INPUT and any(p in rec.name for p in _PARTIAL_COLLECTIVES):
            return "sum", 0
        if golden is not None and golden != rec.shape:
            dim = _concat_dim(golden, rec.shape, self.world)
            if dim is not None and all(s.shape == rec.shape for s in shards.values()):
                return "concat", dim
        return "replicate", 0

    def _merge_record(self, first: Record, shards: list[Record], how: str, dim: int) -> Record:
        shape = list(first.shape)
        if how == "concat" and shape:
            shape[dim] = sum(s.shape[dim] for s in shards)
        shape_t = tuple(shape)
        stats = first.stats
        if how != "replicate" and all(s.has_tensor for s in shards):
            stats = ops.tensor_stats(self._combine(how, dim, shards))
        elif how == "concat":
            stats = _concat_stats([s.stats for s in shards])
        strides = tuple(int(np.prod(shape_t[i + 1 :], dtype=np.int64)) for i in range(len(shape_t)))
        nbytes = first.heap_nbytes * (len(shards) if how == "concat" else 1)
        hash_ = first.hash if how == "replicate" else ""  # one shard's fingerprint is not the whole's
        return dataclasses.replace(
            first,
            rank=0,
            shape=shape_t,
            strides=strides,
            stats=stats,
            hash=hash_,
            heap_nbytes=nbytes,
            contiguous=True,
        )

    def _combine(self, how: str, dim: int, shards: list[Record]) -> torch.Tensor:
        parts = [self.inner.tensor(s) for s in shards]
        if how == "concat":
            return torch.cat(parts, dim=dim) if parts[0].dim() else parts[0]
        if how == "sum":
            acc = parts[0].double()
            for p in parts[1:]:
                acc = acc + p.double()
            return acc.to(parts[0].dtype)
        return parts[0]

    def _check_replicas(self, shards: list[Record]) -> None:
        first = shards[0]
        for other in shards[1:]:
            if first.has_tensor and other.has_tensor:
                a, b = self.inner.tensor(first), self.inner.tensor(other)
                if torch.equal(a, b) or a.shape != b.shape or not a.is_floating_point():
                    continue
                m = ops.compare_metrics(a, b)
                cos, rel = m.cosine, m.rel_l2
            else:
                ga, gb = first.stats.l2norm, other.stats.l2norm
                rel = abs(ga - gb) / max(abs(ga), 1e-30)
                if rel <= 1e-6 and first.stats.mean == other.stats.mean:
                    continue
                cos = None
            self.disagreements.append(
                RankDisagreement(
                    first.step, first.name, first.role.name.lower(), first.arg, other.rank, cos, float(rel)
                )
            )
            return

    # --- the Dump interface compare uses -------------------------------------------------------

    @property
    def ranks(self) -> list[int]:
        return [0]

    def steps(self, rank: int | None = None) -> list[int]:
        return self.inner.steps(0)

    def meta(self, rank: int | None = None) -> dict[str, Any]:
        return {**self.inner.meta(0), "unsharded_from_world_size": self.world}

    def records(
        self,
        rank: int | None = None,
        step: int | None = None,
        name: str | None = None,
        role: Role | None = None,
    ) -> Iterator[Record]:
        if rank not in (None, 0):
            return
        for r in self._merged:
            if step is not None and r.step != step:
                continue
            if role is not None and r.role != role:
                continue
            if name is not None and not fnmatch.fnmatchcase(r.name, name):
                continue
            yield r

    def tensor(self, record: Record) -> torch.Tensor:
        how = self._how.get(id(record))
        if how is None:
            return self.inner.tensor(record)
        key = id(record)
        if key not in self._cache:
            rule, dim, shards = how
            self._cache = {key: self._combine(rule, dim, shards)}  # one tensor at a time
        return self._cache[key]

    def read_into(self, record: Record, start: int, out: np.ndarray) -> None:
        raw = self.tensor(record).contiguous().reshape(-1).view(torch.uint8).numpy()
        out[:] = raw[start : start + out.size]

    def rule_summary(self) -> str:
        applied = ", ".join(f"{k}: {v}" for k, v in sorted(self.applied.items()))
        return f"target unsharded from {self.world} ranks ({applied})"


def _concat_stats(parts: list[ops.TensorStats]) -> ops.TensorStats:
    """Statistics of a concatenation from those of its parts (exact for counts, extrema, sums,
    norms; mean and std pooled)."""
    count = sum(p.count for p in parts)
    finite = sum(p.finite for p in parts)
    total = sum(p.sum for p in parts if not math.isnan(p.sum))
    sq = sum(p.l2norm**2 for p in parts if not math.isnan(p.l2norm))
    mean = total / finite if finite else math.nan
    var = max(sq / finite - mean * mean, 0.0) if finite else math.nan
    nonzero = [p.min_abs_nonzero for p in parts if not math.isnan(p.min_abs_nonzero)]
    return ops.TensorStats(
        count=count,
        nan=sum(p.nan for p in parts),
        posinf=sum(p.posinf for p in parts),
        neginf=sum(p.neginf for p in parts),
        zeros=sum(p.zeros for p in parts),
        min=min((p.min for p in parts), default=math.nan),
        max=max((p.max for p in parts), default=math.nan),
        sum=total,
        mean=mean,
        std=math.sqrt(var) if finite else math.nan,
        absmax=max((p.absmax for p in parts), default=math.nan),
        l2norm=math.sqrt(sq),
        min_abs_nonzero=min(nonzero) if nonzero else math.nan,
    )


__all__ = ["RankDisagreement", "UnshardRule", "UnshardRules", "UnshardedDump"]
