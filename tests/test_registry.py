"""Every native op has a schema, a fake kernel, a reference twin, tests and a benchmark row."""

from __future__ import annotations

import re
from pathlib import Path

import accdump.reference as reference

ROOT = Path(__file__).resolve().parents[1]


def native_ops() -> list[str]:
    text = (ROOT / "csrc" / "ops.cpp").read_text()
    return [name for name, schema in re.findall(r'm\.def\("(\w+)\(([^"]*)', text) if "Tensor" in schema]


def test_ops_are_declared():
    assert set(native_ops()) >= {
        "tensor_stats",
        "tensor_stats_multi",
        "tensor_stats_into",
        "compare_metrics",
        "rowwise_metrics",
    }


def test_every_op_has_fake_reference_test_and_benchmark():
    fakes = (ROOT / "accdump" / "_fakes.py").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests" / "ops").glob("test_*.py"))
    bench = "".join(p.read_text() for p in (ROOT / "benchmarks").glob("bench_*.py"))
    for op in native_ops():
        assert f'register_fake("accdump::{op}")' in fakes, f"{op}: no fake kernel in accdump/_fakes.py"
        assert callable(getattr(reference, op, None)), f"{op}: no reference twin in accdump.reference"
        assert f"torch.ops.accdump.{op}.default" in tests, f"{op}: no opcheck/native test in tests/ops"
        assert f'"{op}"' in bench, f"{op}: no row in benchmarks/bench_*.py"
