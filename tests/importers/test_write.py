"""write_dump: ForeignRecords become segments the reader, show and compare take as recorded ones."""

from __future__ import annotations

import math

import h5py
import pytest
import torch

import accdump
from accdump import ops
from accdump.errors import AccdumpError, DumpExistsError
from accdump.importers import ForeignRecord, write_dump
from accdump.store import Role
from accdump.store.schema import REQUIRED_COLUMNS


def rec(step: int, name: str, **kw) -> ForeignRecord:
    return ForeignRecord(0, step, name, 0, Role.OUTPUT, "0", **kw)


def test_segments_per_rank_and_step_with_full_statistics(tmp_path):
    t = torch.randn(4, 6)[:, ::2]  # a strided view: its layout is recorded, its values stored
    records = [
        ForeignRecord(0, -1, "fc", 0, Role.PARAMETER, "weight", tensor=torch.ones(3), kind="Linear"),
        rec(0, "fc", tensor=t, kind="Linear"),
        rec(0, "fc.stats", stats={"l2norm": 2.0, "max": 1.5}, dtype="bfloat16", shape=(2, 2)),
        ForeignRecord(1, 0, "fc", 0, Role.OUTPUT, "0", tensor=torch.zeros(2, dtype=torch.bfloat16)),
    ]
    summary = write_dump(records, tmp_path / "d", world_size=2, metadata={"imported_from": "test"})
    assert (summary.segments, summary.records, summary.tensors, summary.stats_only) == (3, 4, 3, 1)
    dump = accdump.load(tmp_path / "d")
    assert dump.ranks == [0, 1] and dump.steps() == [-1, 0]
    assert dump.meta()["user_metadata"] == {"imported_from": "test"} and dump.meta()["world_size"] == 2
    with h5py.File(dump.segment_paths(0)[1]) as f:
        assert set(REQUIRED_COLUMNS) <= set(f["records"].dtype.names)
    full = next(dump.records(step=0, name="fc"))
    assert full.strides == (6, 2) and not full.contiguous and full.order == 0 and full.kind == "Linear"
    assert torch.equal(dump.tensor(full), t) and full.stats == ops.tensor_stats(t)
    stats = next(dump.records(step=0, name="fc.stats")).stats
    assert (stats.count, stats.nan, stats.zeros, stats.l2norm, stats.max) == (4, 0, -1, 2.0, 1.5)
    assert math.isnan(stats.std) and math.isnan(stats.mean)


def test_compare_works_on_statistics_only_records(tmp_path):
    def dump(path, scale):
        records = []
        for i in range(4):
            k = scale if i == 2 else 1.0
            stats = {"l2norm": 10.0 * k, "max": k, "min": -k, "absmax": k}
            records.append(rec(0, f"layers.{i}", stats=stats, dtype="float32", shape=(4, 8)))
        write_dump(records, path)

    dump(tmp_path / "golden", 1.0)
    dump(tmp_path / "target", 1.5)
    result = accdump.compare(tmp_path / "golden", tmp_path / "target")
    d = result.first_divergence
    assert d is not None and d.pair.target.name == "layers.2" and d.pair.metrics.source == "stats"


def test_existing_dump_and_regrouping(tmp_path):
    write_dump([rec(0, "a", tensor=torch.ones(1))], tmp_path / "d")
    with pytest.raises(DumpExistsError, match="--overwrite"):
        write_dump([rec(0, "a", tensor=torch.ones(1))], tmp_path / "d")
    write_dump([rec(1, "b", tensor=torch.ones(1))], tmp_path / "d", overwrite=True)
    assert accdump.load(tmp_path / "d").steps() == [1]
    with pytest.raises(AccdumpError, match="arrived twice"):
        write_dump(
            [
                rec(0, "a", tensor=torch.ones(1)),
                rec(1, "a", tensor=torch.ones(1)),
                rec(0, "b", tensor=torch.ones(1)),
            ],
            tmp_path / "e",
        )


def test_unrecordable_tensors_are_listed(tmp_path):
    from accdump.importers import ImportNotes

    notes = ImportNotes()
    records = [rec(0, "c", tensor=torch.ones(2, dtype=torch.complex64)), rec(0, "ok", tensor=torch.ones(2))]
    summary = write_dump(records, tmp_path / "d", notes=notes)
    assert summary.records == 1 and "complex64 tensors cannot be recorded" in notes.skipped[0][1]
