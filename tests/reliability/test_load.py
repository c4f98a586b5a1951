"""benchmarks/bench_load.py at a small size: the recordings keep memory flat, `accdump show` and
`accdump compare` handle the dumps and find the planted change. (The full size, 100,000 records
and 2 GB of tensors per dump, is `python benchmarks/bench_load.py`.)"""

from __future__ import annotations

import importlib.util
import math

from tests.reliability._zygote import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_load", REPO / "benchmarks" / "bench_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_load_run(tmp_path):
    result = _bench().run(records=5_000, tensor_mb=8, out_dir=tmp_path)
    recs = {r["dump"]: r for r in result["recordings"]}
    assert set(recs) == {"stats_golden", "stats_target", "tensor_golden", "tensor_target"}
    assert recs["stats_golden"]["records"] >= 5_000
    for r in recs.values():
        assert math.isfinite(r["peak_rss_mb"]) and r["records_per_s"] > 0
        # flat memory: the peak stays near the RSS measured after the first steps
        assert r["growth_mb"] < 64, r
    for r in result["show"]:
        assert r["rc"] == 0 and f"{recs[r['dump']]['records']} records" in r["stdout"], r["stderr"]
    for r, mode in zip(result["compare"], ("stats", "tensor"), strict=True):
        target = recs[f"{mode}_target"]
        assert r["rc"] == 1 and r["pairs"] == target["records"], r["stderr"]
        where = f"DIVERGED at rank 0, step {target['bug_step']}: {target['bug_layer']} "
        assert r["verdict"].startswith(where), r["verdict"]
