"""The README's demo command: every op agrees with the float64 reference on every device here."""

from __future__ import annotations

from accdump.selfcheck import run_selfcheck


def test_selfcheck_passes_and_covers_every_op():
    rows = run_selfcheck()
    assert rows and all(r.ok for r in rows), [r for r in rows if not r.ok]
    assert {r.op for r in rows} >= {
        "tensor_stats",
        "tensor_stats_multi",
        "tensor_stats_into",
        "tensor_stats_multi_into",
        "tensor_fingerprint_into",
        "tensor_fingerprint_multi_into",
        "compare_metrics",
        "rowwise_metrics",
    }
