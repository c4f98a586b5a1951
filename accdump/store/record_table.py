"""A segment's record table built from one step's captures, column by column (NumPy only).

The recorder hands a step over as arrays (StepColumns: a few C-speed conversions of its
captures) and the table is built here, in the segment writer process (or the writer thread when
segments are written in-process): every bit of this work done in the recording process is
interpreter time taken from the user's program. No per-record Python runs here either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from accdump.store.schema import STATS_FIELDS, nul_guarded, record_dtype

INT_COLUMNS = ("order", "call", "role", "storage_offset", "contiguous", "stats_index", "hash_index")
STRING_COLUMNS = ("name", "arg", "kind", "dtype", "device")


@dataclass
class StepColumns:
    """One step's records before their table is built, as arrays (cheap to make from the
    captures, and to send to the segment writer process as raw bytes).

    `ints` holds INT_COLUMNS as int64 arrays; `strings` STRING_COLUMNS as NumPy unicode arrays;
    `ndims` each record's number of dimensions and `shapes` / `strides` the dimensions of all
    records one after another; `stats` and `hashes` each device's float64 [rows, 13] statistics
    and int64 [rows, 2] fingerprints, which records index by stats_index / hash_index;
    `heap_slot` each record's tensor among the step's heap pieces (-1: none); string columns
    may come as `string_ids` into `labels` rather than in `strings`. A CUDA graph
    replay comes with its `table` already built."""

    step: int
    ints: dict[str, np.ndarray] = field(default_factory=dict)
    strings: dict[str, np.ndarray] = field(default_factory=dict)
    ndims: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    shapes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    strides: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    hashes: dict[str, np.ndarray] = field(default_factory=dict)
    heap_slot: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    table: np.ndarray | None = None
    # string columns given as indices into `labels` instead (records made natively: the strings
    # are resolved here, in the segment writer process, not by the recording process)
    string_ids: dict[str, np.ndarray] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ndims) if self.table is None else len(self.table)


def hex_digests(table: np.ndarray) -> np.ndarray:
    """The hex fingerprint of each row of an int64 [n, 2] table, as `S32` bytes, without a Python
    loop: the hex of the big-endian bytes of both lanes is exactly the two 16-digit halves."""
    text = np.ascontiguousarray(table, dtype=">i8").tobytes().hex().encode()
    return np.frombuffer(text, dtype="S32")


def _padded(flat: np.ndarray, ndims: np.ndarray, width: int) -> np.ndarray:
    """[n, width] int64 array of the records' dimensions (record i has ndims[i]), zero-padded."""
    out = np.zeros((len(ndims), width), dtype=np.int64)
    out[np.arange(width) < ndims[:, None]] = flat
    return out


def heap_layout(sizes: list[int] | np.ndarray) -> np.ndarray:
    """Byte offset of each heap piece when the pieces are stored one after another."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else sizes


def string_columns(sc: StepColumns) -> dict[str, np.ndarray]:
    """Every string column of `sc` as a NumPy unicode array (those given by label resolved)."""
    if not sc.string_ids:
        return sc.strings
    labels = np.array([nul_guarded(v) for v in sc.labels], dtype=str)
    return {**sc.strings, **{col: labels[ids] for col, ids in sc.string_ids.items()}}


def _stored(value: str) -> bytes:
    """UTF-8 bytes of a string column's value, NUL_GUARD after a trailing NUL."""
    return nul_guarded(value).encode("utf-8", "surrogateescape")


def _utf8(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of each value as stored and their lengths (str.encode per value:
    np.char.encode costs ~1 µs a value, once the table's largest cost)."""
    encoded = [_stored(v) for v in values]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    return (np.array(encoded, dtype=bytes) if encoded else np.zeros(0, dtype="S1")), lengths


def _encoded_columns(sc: StepColumns) -> dict[str, np.ndarray]:
    """Every string column of `sc` as UTF-8 bytes, each as wide as its longest value; labels are
    encoded once each."""
    out = {col: _utf8(sc.strings[col].tolist())[0] for col in sc.strings if col not in sc.string_ids}
    if sc.string_ids:
        labels, lengths = _utf8(sc.labels)
        for col, ids in sc.string_ids.items():
            width = max(1, int(lengths[ids].max())) if len(ids) else 1
            out[col] = labels[ids].astype(f"S{width}")
    return out


def build_table(sc: StepColumns, heap_sizes: list[int] | np.ndarray) -> np.ndarray:
    """The record table of one step; `heap_sizes` are the byte sizes of its heap pieces."""
    if sc.table is not None:
        return sc.table
    n = len(sc)
    if n == 0:
        return np.zeros(0, dtype=record_dtype({}, 1))
    ints = sc.ints
    strings = _encoded_columns(sc)
    stats = np.zeros((n, len(STATS_FIELDS)))
    hashes = np.zeros(n, dtype="S1")
    devices = strings["device"]
    for dev in np.unique(devices):
        idx = np.flatnonzero(devices == dev)
        name = dev.decode()
        stats[idx] = sc.stats[name][ints["stats_index"][idx]]
        hashed = idx[ints["hash_index"][idx] >= 0]
        if len(hashed):
            hashes = hashes.astype("S32")
            hashes[hashed] = hex_digests(sc.hashes[name][ints["hash_index"][hashed]])
    strings["hash"] = hashes
    dims = max(1, int(sc.ndims.max()))
    rows = np.zeros(n, dtype=record_dtype({col: v.dtype.itemsize for col, v in strings.items()}, dims))
    rows["step"] = sc.step
    for col in ("order", "call", "role", "storage_offset", "contiguous"):
        rows[col] = ints[col]
    for col, vals in strings.items():
        rows[col] = vals
    rows["ndim"] = sc.ndims
    rows["shape"] = _padded(sc.shapes, sc.ndims, dims)
    rows["strides"] = _padded(sc.strides, sc.ndims, dims)
    for k, f in enumerate(STATS_FIELDS):
        rows[f] = stats[:, k]
    slot = sc.heap_slot if len(sc.heap_slot) == n else np.full(n, -1, dtype=np.int64)
    stored = slot >= 0
    sizes = np.asarray(heap_sizes, dtype=np.int64)
    rows["heap_offset"] = -1
    rows["heap_offset"][stored] = heap_layout(sizes)[slot[stored]]
    rows["heap_nbytes"][stored] = sizes[slot[stored]]
    return rows


def to_wire(sc: StepColumns) -> tuple[dict[str, Any], list[np.ndarray]]:
    """A JSON-able description of `sc` and the arrays it refers to, in order (sent as raw bytes)."""
    arrays: list[np.ndarray] = []

    def ref(a: np.ndarray) -> list[Any]:
        arrays.append(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        return [a.dtype.str, list(a.shape)]

    meta: dict[str, Any] = {"step": sc.step}
    if sc.table is not None:
        t = sc.table
        names = t.dtype.names or ()
        meta["table"] = {
            "widths": {c: t.dtype[c].itemsize for c in names if t.dtype[c].kind == "S"},
            "dims": t.dtype["shape"].shape[0],
            "rows": len(t),
        }
        arrays.append(np.ascontiguousarray(t).view(np.uint8))
        return meta, arrays
    meta["ints"] = {k: ref(v) for k, v in sc.ints.items()}
    meta["strings"] = {k: ref(v) for k, v in sc.strings.items()}
    meta["string_ids"] = {k: ref(v) for k, v in sc.string_ids.items()}
    meta["labels"] = sc.labels  # in the JSON description: one C-speed encoding of every label
    for k in ("ndims", "shapes", "strides", "heap_slot"):
        meta[k] = ref(getattr(sc, k))
    meta["stats"] = {k: ref(v) for k, v in sc.stats.items()}
    meta["hashes"] = {k: ref(v) for k, v in sc.hashes.items()}
    return meta, arrays


def from_wire(meta: dict[str, Any], frames: list[Any]) -> StepColumns:
    """The StepColumns that to_wire described; `frames` are the arrays' bytes, in order."""
    it = iter(frames)
    if "table" in meta:
        t = meta["table"]
        dtype = record_dtype(t["widths"], t["dims"])
        raw = np.frombuffer(next(it), dtype=np.uint8)
        if raw.size != t["rows"] * dtype.itemsize:
            raise ValueError(f"record table of {raw.size} bytes for {t['rows']} rows")
        return StepColumns(meta["step"], table=raw.view(dtype))

    def arr(spec: list[Any]) -> np.ndarray:
        dtype, shape = np.dtype(spec[0]), tuple(spec[1])
        return np.frombuffer(next(it), dtype=dtype).reshape(shape)

    sc = StepColumns(meta["step"])
    sc.ints = {k: arr(v) for k, v in meta["ints"].items()}
    sc.strings = {k: arr(v) for k, v in meta["strings"].items()}
    sc.string_ids = {k: arr(v) for k, v in meta["string_ids"].items()}
    sc.labels = meta["labels"]
    for k in ("ndims", "shapes", "strides", "heap_slot"):
        setattr(sc, k, arr(meta[k]))
    sc.stats = {k: arr(v) for k, v in meta["stats"].items()}
    sc.hashes = {k: arr(v) for k, v in meta["hashes"].items()}
    return sc


def batch_tables(tables: list[tuple[np.ndarray, list[np.ndarray]]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One record table and heap for several steps' tables (string columns widened to the
    longest, shapes padded to the most dimensions, heap offsets moved past earlier steps)."""
    if len(tables) == 1:
        return tables[0]
    rows_list = [t for t, _ in tables]
    names = rows_list[0].dtype.names or ()
    dims = max(t.dtype["shape"].shape[0] for t in rows_list)
    widths = {
        n: max(t.dtype[n].itemsize for t in rows_list) for n in names if rows_list[0].dtype[n].kind == "S"
    }
    out = np.zeros(sum(len(t) for t in rows_list), dtype=record_dtype(widths, dims))
    heap: list[np.ndarray] = []
    start = heap_base = 0
    for t, h in tables:
        part = out[start : start + len(t)]
        for n in names:
            if n in ("shape", "strides"):
                part[n][:, : t.dtype[n].shape[0]] = t[n]
            elif n == "heap_offset":
                part[n] = np.where(t[n] >= 0, t[n] + heap_base, -1)
            else:
                part[n] = t[n]
        heap += h
        heap_base += sum(int(x.size) for x in h)
        start += len(t)
    return out, heap
