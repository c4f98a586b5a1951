"""Comparing dumps: alignment, pair metrics, the first divergence, reports."""

from accdump.diff.comparison import CompareResult, Divergence, Pair, compare
from accdump.diff.metrics import Thresholds, Verdict
from accdump.diff.rules import RenameRules

__all__ = ["CompareResult", "Divergence", "Pair", "RenameRules", "Thresholds", "Verdict", "compare"]
