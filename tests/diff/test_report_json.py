"""write_json encodes pairs one at a time: the same text as encoding the whole result at once, with
memory that does not grow with the number of pairs."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc

import pytest
import torch

import accdump
from accdump.diff import compare
from accdump.diff.report import finite_json, write_json


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report_json")
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(4, 8, generator=gen) for _ in range(6)]
    for label in ("golden", "target"):
        with accdump.record(None, tmp / label, mode="tensor"):
            for i, x in enumerate(xs):
                # identical tensors (an infinite SQNR, written as null), one divergent, one NaN
                y = x if label == "golden" or i < 3 else -x if i == 3 else x.clone().fill_(float("nan"))
                accdump.probe(f"p{i}", y)
    return compare(tmp / "golden", tmp / "target", device="cpu")


def whole(result) -> str:
    return json.dumps(finite_json(result.to_dict()), indent=1, allow_nan=False)


def test_json_text_equals_encoding_the_whole_result(result, tmp_path):
    assert result.first_divergence is not None and len(result.pairs) == 6
    for r in (result, dataclasses.replace(result, pairs=[])):
        path = tmp_path / "r.json"
        write_json(r, path)
        assert path.read_text() == whole(r)
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))


def test_json_memory_does_not_grow_with_the_pairs(result, tmp_path):
    many = dataclasses.replace(result, pairs=result.pairs * 2000)  # 12,000 pairs, ~8 MB of JSON
    write_json(result, tmp_path / "warm.json")  # the encoder's one-time allocations
    tracemalloc.start()
    try:
        write_json(many, tmp_path / "r.json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = (tmp_path / "r.json").stat().st_size
    assert size > 5_000_000
    assert peak < size / 5, (peak, size)  # encoding it whole took about 9x the text
