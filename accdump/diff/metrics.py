"""Metrics of one golden/target pair and its verdict band.

With both full tensors: cosine, norm ratio, relative L2 error, SQNR, allclose failures (the
native compare_metrics, in float64). With statistics only: relative differences of norm and
absmax, differences of std and mean in units of the golden's magnitude, and NaN/Inf counts. NaN
or Inf appearing in the target only is always a divergence. Several real bugs (a missing global
scale, FP8 bits read in the wrong variant) keep the cosine at 1 and only change magnitudes, so
norms are judged too. Integer and bool tensors (token ids, expert indices, int8 codes) have no
rounding error: they are judged equal or not, never by these tolerances.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Any

import torch

from accdump import ops
from accdump.store.reader import Record


class Verdict(IntEnum):
    PASS = 0
    SUSPICIOUS = 1
    BROKEN = 2
    CATASTROPHIC = 3
    MISMATCH = 4  # shapes or dtypes that cannot be compared

    @property
    def label(self) -> str:
        return self.name.lower()


def _limit(v: Any) -> float | None:
    """`v` as a limit (a number or a numeric string); None for a bool, NaN or anything else."""
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


@dataclass(frozen=True)
class Thresholds:
    """Band limits: a pair passes when every metric is inside the `pass` limits, and so on."""

    cosine: tuple[float, float, float] = (0.999, 0.99, 0.9)  # pass, suspicious, broken lower bounds
    rel_l2: tuple[float, float, float] = (0.05, 0.15, 0.5)  # upper bounds
    # |‖t‖/‖g‖ - 1| upper bounds: never above rel_l2 (it bounds them), so tighter limits; one
    # decode token of a correct FP8 layer can move its norm by 5%
    norm_ratio_dev: tuple[float, float, float] = (0.03, 0.1, 0.3)
    stat_rel: tuple[float, float, float] = (0.02, 0.05, 0.25)  # stats-only: rel. diff of l2/std/mean
    # stats-only |absmax| relative difference: one element, which FP8 rounding alone moves by 6%
    absmax_rel: tuple[float, float, float] = (0.07, 0.15, 0.5)
    atol: float = 1e-3
    rtol: float = 1e-2
    overrides: tuple[tuple[str, Thresholds], ...] = ()  # (name glob, thresholds); the last match wins

    def for_name(self, name: str) -> Thresholds:
        """The thresholds that apply to records named `name`."""
        chosen = self
        for glob, th in self.overrides:
            if fnmatch.fnmatchcase(name, glob):
                chosen = th
        return chosen

    @classmethod
    def load(cls, path: str | Path) -> Thresholds:
        """From YAML/JSON: `{cosine: [0.999, 0.99, 0.9], rel_l2: ..., overrides: [{glob: "*.lm_head",
        cosine: [0.99, 0.95, 0.8]}]}`; a single number sets the pass limit and keeps the others."""
        from accdump.diff.rules import RulesError, read_structured

        data = read_structured(Path(path))
        if not isinstance(data, dict):
            raise RulesError(f"{path}: expected a mapping of metric -> limits")

        def build(base: Thresholds, spec: dict[str, Any], where: str) -> Thresholds:
            changes: dict[str, Any] = {}
            for key, value in spec.items():
                if key in ("overrides", "glob"):
                    continue
                current = getattr(base, key, None)
                if current is None or key == "overrides":
                    raise RulesError(f"{path}: {where}unknown threshold {key!r}")
                given = value if isinstance(value, list) and isinstance(current, tuple) else [value]
                vals = [_limit(v) for v in given]  # a NaN limit would fail every record
                if len(vals) > 3 or any(v is None for v in vals):
                    raise RulesError(f"{path}: {where}{key} must be a number or a list of 3 numbers")
                if isinstance(current, tuple):
                    changes[key] = tuple(vals + list(current[len(vals) :]))
                else:
                    changes[key] = vals[0]
            return replace(base, **changes)

        top = build(cls(), data, "")
        overrides = []
        items = data.get("overrides") or []
        if not isinstance(items, list):
            raise RulesError(f"{path}: overrides must be a list of {{glob: ..., limits...}}")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("glob"), str):
                raise RulesError(f"{path}: override {i} needs a 'glob' (a string)")
            overrides.append((str(item["glob"]), build(replace(top, overrides=()), item, f"override {i}: ")))
        return replace(top, overrides=tuple(overrides))


@dataclass(slots=True)
class PairMetrics:
    """What compare measured for one pair; fields are None when not measurable from the data."""

    source: str  # "tensor" or "stats"
    cosine: float | None = None
    rel_l2: float | None = None
    norm_ratio: float | None = None
    sqnr_db: float | None = None
    max_abs_diff: float | None = None
    allclose_fail_fraction: float | None = None
    mean_diff: float | None = None  # stats: |mean_t - mean_g| / max(std_g, |mean_g|)
    std_rel_diff: float | None = None  # stats: |std_t - std_g| / max(std_g, |mean_g|)
    absmax_rel_diff: float | None = None
    new_nan: int = 0  # NaN/Inf in target where golden has none (counts or positions)
    new_inf: int = 0
    rows_cosine_worst: list[tuple[int, float]] = field(default_factory=list)  # (row, cosine), worst first

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    denom = max(abs(a), 1e-30)
    return abs(b - a) / denom


def _band_low(value: float, bounds: tuple[float, float, float]) -> Verdict:
    """For metrics where larger is better (cosine)."""
    if value >= bounds[0]:
        return Verdict.PASS
    if value >= bounds[1]:
        return Verdict.SUSPICIOUS
    if value >= bounds[2]:
        return Verdict.BROKEN
    return Verdict.CATASTROPHIC


def _band_high(value: float, bounds: tuple[float, float, float]) -> Verdict:
    """For metrics where smaller is better (errors)."""
    if value <= bounds[0]:
        return Verdict.PASS
    if value <= bounds[1]:
        return Verdict.SUSPICIOUS
    if value <= bounds[2]:
        return Verdict.BROKEN
    return Verdict.CATASTROPHIC


def verdict_of(m: PairMetrics, th: Thresholds) -> Verdict:
    if m.new_nan or m.new_inf:
        return Verdict.CATASTROPHIC
    bands = []
    if m.source == "tensor":
        if m.cosine is not None:
            bands.append(_band_low(m.cosine, th.cosine))
        if m.rel_l2 is not None:
            bands.append(_band_high(m.rel_l2, th.rel_l2))
        if m.norm_ratio is not None:
            bands.append(_band_high(abs(m.norm_ratio - 1.0), th.norm_ratio_dev))
    else:
        if m.norm_ratio is not None:
            bands.append(_band_high(abs(m.norm_ratio - 1.0), th.stat_rel))
        for v in (m.std_rel_diff, m.mean_diff):
            if v is not None:
                bands.append(_band_high(v, th.stat_rel))
        if m.absmax_rel_diff is not None:
            bands.append(_band_high(m.absmax_rel_diff, th.absmax_rel))
    return max(bands, default=Verdict.PASS)


def stats_metrics(g: Record, t: Record) -> PairMetrics:
    gs, ts = g.stats, t.stats
    m = PairMetrics(source="stats")
    if math.isnan(gs.l2norm) or math.isnan(ts.l2norm):
        pass  # not known (statistics imported from a tool that does not give a norm)
    elif gs.l2norm > 0:
        m.norm_ratio = ts.l2norm / gs.l2norm
    elif ts.l2norm > 0:
        m.norm_ratio = math.inf
    else:
        m.norm_ratio = 1.0
    if math.isfinite(gs.std) and math.isfinite(ts.std):
        # both moments in units of the golden's magnitude: measured against the std alone, a
        # tensor whose spread is small next to its mean (top-2 routing weights 0.5 +- 0.004)
        # fails on bfloat16 rounding; for a centred tensor (most activations) the scale is the std
        scale = max(gs.std, abs(gs.mean), 1e-30)
        m.std_rel_diff = abs(ts.std - gs.std) / scale
        m.mean_diff = abs(ts.mean - gs.mean) / scale
    if math.isfinite(gs.absmax) and math.isfinite(ts.absmax):
        m.absmax_rel_diff = _rel(gs.absmax, ts.absmax)
    counts = (gs.nan, ts.nan, gs.posinf, gs.neginf, ts.posinf, ts.neginf)
    if min(counts) >= 0:  # -1: not known (imported statistics)
        m.new_nan = max(0, ts.nan - gs.nan)
        m.new_inf = max(0, (ts.posinf + ts.neginf) - (gs.posinf + gs.neginf))
    return m


# Statistics that are exact for an integer tensor (float64 sums of integers are exact below 2^53);
# mean and std round, and add nothing to count, sum and l2norm.
_EXACT_STATS = ("count", "zeros", "sum", "min", "max", "absmax", "l2norm", "min_abs_nonzero")
_COUNTS = ("count", "zeros")


def is_integer(dtype: str) -> bool:
    """True for the name of an integer or bool dtype ("int64", "bool", "uint8", ...)."""
    dt = getattr(torch, dtype, None)
    return isinstance(dt, torch.dtype) and not (dt.is_floating_point or dt.is_complex)


def integer_stats_difference(g: Record, t: Record) -> str:
    """'' when two integer records' exact statistics (and fingerprints, in hash mode) agree, else a
    note naming those that differ. Statistics not known on either side (imported) are skipped."""
    differ = []
    for name in _EXACT_STATS:
        a, b = float(getattr(g.stats, name)), float(getattr(t.stats, name))
        if math.isnan(a) or math.isnan(b) or (name in _COUNTS and min(a, b) < 0):
            continue
        # 1e-12: above the float64 rounding of sums too large to be exact (and of a concatenation's
        # pooled norm), below the change of one element (1 or more in the sum) while sums stay < 1e12
        if abs(a - b) > 1e-12 * max(abs(a), abs(b)):
            differ.append(name)
    if g.hash and t.hash and g.dtype == t.dtype and g.hash != t.hash:
        differ.append("fingerprint")
    return f"integer statistics differ ({', '.join(differ)})" if differ else ""


def integer_tensor_difference(g: torch.Tensor, t: torch.Tensor) -> str:
    """'' when two integer tensors hold equal values (shapes aligned by _align_shapes), else a note
    with the number of unequal elements and the first one's index."""
    aligned = _align_shapes(g, t)
    if aligned is None:
        return f"shapes {list(g.shape)} and {list(t.shape)} do not align"
    a, b = aligned
    unequal = a != b
    n = int(unequal.sum())
    if n == 0:
        return ""
    first = unequal.nonzero()[0].tolist()
    where = f", first at {first}" if first else ""
    return f"integer values differ ({n} of {a.numel()} elements{where})"


def _align_shapes(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Makes compatible shapes equal: drops size-1 dimensions, or crops padding to a multiple."""
    if a.shape == b.shape:
        return a, b
    if a.numel() == b.numel():
        return a.reshape(-1), b.reshape(-1)
    sa, sb = [s for s in a.shape if s != 1], [s for s in b.shape if s != 1]
    if len(sa) == len(sb) and all(x <= y for x, y in zip(sa, sb, strict=True)):
        b2 = b.reshape(sb)[tuple(slice(0, x) for x in sa)]
        return a.reshape(sa), b2  # target padded: compare the golden extent
    return None


def tensor_metrics(g: torch.Tensor, t: torch.Tensor, th: Thresholds, device: str) -> PairMetrics | None:
    """Metrics of two tensors in hand (shapes aligned by _align_shapes); None if they cannot align."""
    aligned = _align_shapes(g, t)
    if aligned is None:
        return None
    a, b = aligned
    if not a.dtype.is_floating_point or not b.dtype.is_floating_point:
        a, b = a.to(torch.float64), b.to(torch.float64)
    if a.dtype not in ops.METRICS_DTYPES or b.dtype not in ops.METRICS_DTYPES:
        a, b = a.float(), b.float()
    a, b = a.to(device), b.to(device)
    pm = ops.compare_metrics(a, b, atol=th.atol, rtol=th.rtol)
    nan = (int(torch.isnan(a).sum()), int(torch.isnan(b).sum())) if pm.nan_mismatch else (0, 0)
    inf = (int(torch.isinf(a).sum()), int(torch.isinf(b).sum())) if pm.inf_mismatch else (0, 0)
    m = from_pair_metrics(pm, nan, inf)
    if a.dim() >= 1 and a.numel() > 0 and verdict_of(m, th) >= Verdict.SUSPICIOUS:
        # per-row detail only where it will be read: a second pass over every passing pair would
        # halve the comparison's speed
        m.rows_cosine_worst = worst_rows(ops.rowwise_metrics(a, b).cosine.cpu())
    return m


def from_pair_metrics(pm: ops.PairMetrics, nan: tuple[int, int], inf: tuple[int, int]) -> PairMetrics:
    """A tensor pair's metrics from compare_metrics and the NaN / Inf counts (golden, target)."""
    m = PairMetrics(source="tensor")
    m.cosine, m.rel_l2, m.norm_ratio, m.sqnr_db = pm.cosine, pm.rel_l2, pm.norm_ratio, pm.sqnr_db
    m.max_abs_diff = pm.max_abs_diff
    m.allclose_fail_fraction = pm.allclose_fail_fraction
    m.new_nan = _target_only(pm.nan_mismatch, *nan)
    m.new_inf = _target_only(pm.inf_mismatch, *inf)
    return m


def _target_only(mismatch: int, golden: int, target: int) -> int:
    """Positions where the target holds a NaN (an Inf) that the golden does not, from the positions
    that differ and each side's count: (mismatch + target - golden) / 2. A count difference alone
    misses a NaN that moved; an Inf whose sign flipped counts in both, hence rounding up. Counts
    of -1 (not known: imported statistics) give 0, as stats_metrics does."""
    if golden < 0 or target < 0:
        return 0
    return min(mismatch, max(0, (mismatch + target - golden + 1) // 2))


def worst_rows(cosine: torch.Tensor, k: int = 5) -> list[tuple[int, float]]:
    """The k rows of lowest cosine (NaN counts as lowest), as (row, cosine)."""
    k = min(k, cosine.numel())
    worst = torch.argsort(torch.nan_to_num(cosine, nan=-2.0))[:k]
    return [(int(i), float(cosine[i])) for i in worst]
