"""Turns ForeignRecords into a real accdump dump with accdump's own SegmentWriter: one segment per
(rank, step), rows laid out by schema.record_dtype, statistics from accdump.ops.tensor_stats.

Records must arrive grouped by (rank, step) (every source yields them so); only the group being
assembled is held in memory, so an import needs at most one step's tensors at a time.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import accdump
from accdump import ops
from accdump.errors import AccdumpError, DumpExistsError, SourceFormatError
from accdump.importers.records import ForeignRecord, ImportNotes, stats_vector
from accdump.store.dtypes import dtype_name, tensor_to_bytes
from accdump.store.schema import FORMAT_NAME, FORMAT_VERSION, SEGMENT_GLOB, record_dtype
from accdump.store.writer import SegmentWriter, json_attr


@dataclass
class WriteSummary:
    """What write_dump wrote."""

    out: Path
    ranks: set[int] = field(default_factory=set)
    steps: set[int] = field(default_factory=set)
    records: int = 0
    tensors: int = 0
    stats_only: int = 0
    segments: int = 0
    nbytes: int = 0  # bytes of the segment files


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


@dataclass
class _Row:
    name: str
    call: int
    role: int
    arg: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    storage_offset: int
    contiguous: bool
    stats: list[float]
    heap: np.ndarray | None


def _row(rec: ForeignRecord, notes: ImportNotes) -> _Row | None:
    t = rec.tensor
    if t is None:
        if rec.stats is None:
            raise AccdumpError(f"{rec.source}: record {rec.name!r} has neither a tensor nor statistics")
        shape = tuple(rec.shape)
        return _Row(
            rec.name, rec.call, int(rec.role), rec.arg, rec.kind, rec.dtype, shape,
            _contiguous_strides(shape), 0, True, stats_vector(rec.stats, shape), None,
        )  # fmt: skip
    if t.layout != torch.strided or t.dtype not in ops.STATS_DTYPES:
        why = f"{str(t.layout).removeprefix('torch.')} {dtype_name(t.dtype)} tensors cannot be recorded"
        notes.skipped.append((f"{rec.source} ({rec.name} {rec.arg})", why))
        return None
    t = t.detach().cpu()
    stats = ops.tensor_stats_raw(t).tolist()
    return _Row(
        rec.name, rec.call, int(rec.role), rec.arg, rec.kind, dtype_name(t.dtype), tuple(t.shape),
        tuple(t.stride()), int(t.storage_offset()), t.is_contiguous(), stats,
        tensor_to_bytes(t.contiguous()),
    )  # fmt: skip


def _table(step: int, rows: list[_Row]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The record table and heap pieces of one segment."""
    strings = {
        col: [getattr(r, col).encode("utf-8") for r in rows] for col in ("name", "arg", "kind", "dtype")
    }
    widths = {col: max((len(v) for v in vals), default=1) for col, vals in strings.items()}
    dims = max((len(r.shape) for r in rows), default=1)
    table = np.zeros(len(rows), dtype=record_dtype(widths, dims))
    table["step"] = step
    table["order"] = np.arange(len(rows))
    for col, vals in strings.items():
        table[col] = vals
    table["device"] = b""
    table["hash"] = b""
    heap: list[np.ndarray] = []
    offset = 0
    for i, r in enumerate(rows):
        table["call"][i], table["role"][i] = r.call, r.role
        table["ndim"][i] = len(r.shape)
        table["shape"][i, : len(r.shape)] = r.shape
        table["strides"][i, : len(r.strides)] = r.strides
        table["storage_offset"][i], table["contiguous"][i] = r.storage_offset, r.contiguous
        for f, v in zip(ops.STATS_FIELDS, r.stats, strict=True):
            table[f][i] = v
        if r.heap is None:
            table["heap_offset"][i], table["heap_nbytes"][i] = -1, 0
        else:
            table["heap_offset"][i], table["heap_nbytes"][i] = offset, r.heap.size
            heap.append(r.heap)
            offset += r.heap.size
    return table, heap


def _run_attrs(rank: int, world_size: int, mode: str, level: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "accdump_version": accdump.__version__,
        "torch_version": str(torch.__version__),
        "cuda_version": "",
        "device_name": "unknown (imported)",
        "command_line": json.dumps(sys.argv),
        "world_size": world_size,
        "rank": rank,
        "mode": mode,
        "level": level,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "host": socket.gethostname(),
        "user_metadata": json_attr(metadata),
        "native": ops.backend_reason(),
    }


def _check_output(out: Path, overwrite: bool) -> None:
    """A dump directory holding segments is replaced only with `overwrite`, and then entirely, so
    ranks of an earlier recording never mix with the imported ones."""
    old = [p for d in out.glob("rank*") if d.is_dir() for p in d.glob(SEGMENT_GLOB)]
    if old and not overwrite:
        raise DumpExistsError(
            f"{out} already holds a recording ({len(old)} segment(s)); choose a new output "
            "directory or pass --overwrite"
        )
    for p in old:
        p.unlink()


def write_dump(
    records: Iterable[ForeignRecord],
    out: str | os.PathLike[str],
    *,
    world_size: int = 1,
    mode: str = "tensor",
    level: str = "module",
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    notes: ImportNotes | None = None,
) -> WriteSummary:
    """Writes `records` (grouped by (rank, step), in execution order within a group) as an accdump
    dump in `out`: one segment per (rank, step), in the order the groups arrive."""
    out = Path(out)
    notes = notes if notes is not None else ImportNotes()
    _check_output(out, overwrite)
    summary = WriteSummary(out)
    writers: dict[int, SegmentWriter] = {}
    done: set[tuple[int, int]] = set()
    key: tuple[int, int] | None = None
    rows: list[_Row] = []

    def flush() -> None:
        if key is None or not rows:
            return
        rank, step = key
        w = writers.get(rank)
        if w is None:
            attrs = _run_attrs(rank, max(world_size, rank + 1), mode, level, metadata or {})
            w = writers[rank] = SegmentWriter(out, rank, attrs, overwrite=overwrite)
        table, heap = _table(step, rows)
        path = w.write(table, heap, {"steps": np.asarray([step], dtype=np.int64)})
        summary.segments += 1
        summary.nbytes += path.stat().st_size
        summary.ranks.add(rank)
        summary.steps.add(step)
        summary.records += len(rows)
        summary.tensors += sum(r.heap is not None for r in rows)
        summary.stats_only += sum(r.heap is None for r in rows)

    try:
        for rec in records:
            k = (rec.rank, rec.step)
            if k != key:
                flush()
                if k in done:
                    raise AccdumpError(f"import: rank {k[0]} step {k[1]} arrived twice (a bug in the source)")
                done.add(k)
                key, rows = k, []
            row = _row(rec, notes)
            if row is not None:
                rows.append(row)
        flush()
    finally:
        for w in writers.values():
            w.close()
    if summary.records == 0:
        raise SourceFormatError("found nothing to import: no tensor or statistics record")
    return summary
