"""record_table: a step's columns become the same table whether string columns come as text or
as indices into labels, and survive the trip to the segment writer process unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from accdump.store.record_table import (
    INT_COLUMNS,
    STRING_COLUMNS,
    StepColumns,
    build_table,
    from_wire,
    string_columns,
    to_wire,
)
from accdump.store.schema import STATS_FIELDS

LABELS = ["model.layers.0/self_attn", "0", "Linear", "bfloat16", "cuda:0", "ünï/cødé.x", "kw", "cpu"]


def columns(by_label: bool, n: int = 7) -> StepColumns:
    rng = np.random.default_rng(0)
    ints = {c: rng.integers(0, 5, n).astype(np.int64) for c in INT_COLUMNS}
    ints["order"] = np.arange(n, dtype=np.int64)
    ints["hash_index"] = np.full(n, -1, dtype=np.int64)
    ids = {
        "name": rng.choice([0, 5], n),
        "arg": rng.choice([1, 6], n),
        "kind": np.full(n, 2),
        "dtype": np.full(n, 3),
        "device": rng.choice([4, 7], n),
    }
    ids = {k: v.astype(np.int64) for k, v in ids.items()}
    ints["stats_index"] = rng.integers(0, 3, n).astype(np.int64)
    ndims = rng.integers(0, 4, n).astype(np.int64)
    total = int(ndims.sum())
    sc = StepColumns(
        3,
        ints=ints,
        ndims=ndims,
        shapes=rng.integers(1, 9, total).astype(np.int64),
        strides=rng.integers(1, 99, total).astype(np.int64),
        stats={d: rng.standard_normal((3, len(STATS_FIELDS))) for d in ("cuda:0", "cpu")},
        heap_slot=np.full(n, -1, dtype=np.int64),
    )
    if by_label:
        sc.string_ids, sc.labels = ids, list(LABELS)
    else:
        text = np.array(LABELS, dtype=str)
        sc.strings = {c: text[ids[c]] for c in STRING_COLUMNS}
    return sc


def test_labels_give_the_same_table_as_text():
    by_label, as_text = build_table(columns(True), []), build_table(columns(False), [])
    assert by_label.dtype == as_text.dtype
    assert by_label.tobytes() == as_text.tobytes()
    assert set(by_label["name"]) == {b"model.layers.0/self_attn", "ünï/cødé.x".encode()}


@pytest.mark.parametrize("by_label", [True, False])
def test_columns_cross_the_wire_unchanged(by_label):
    sc = columns(by_label)
    meta, arrays = to_wire(sc)
    back = from_wire(meta, [a.tobytes() for a in arrays])
    assert build_table(back, []).tobytes() == build_table(sc, []).tobytes()
    assert back.labels == sc.labels


def test_string_columns_resolve_labels_and_keep_text():
    sc = columns(True)
    sc.strings = {"kind": np.array(["Kept"] * len(sc), dtype=str)}
    del sc.string_ids["kind"]
    text = string_columns(sc)
    assert set(text) == set(STRING_COLUMNS)
    assert list(text["kind"]) == ["Kept"] * len(sc)
    assert list(text["dtype"]) == ["bfloat16"] * len(sc)


def test_a_label_index_out_of_range_is_an_error():
    sc = columns(True)
    sc.string_ids["name"][0] = len(LABELS)
    with pytest.raises(IndexError):
        build_table(sc, [])
