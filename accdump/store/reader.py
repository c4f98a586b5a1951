"""Reads dumps: `accdump.load(DIR)` gives a Dump whose records stream segment by segment."""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from accdump import ops
from accdump.errors import DumpFormatError
from accdump.ops import STATS_FIELDS, TensorStats
from accdump.store.chunk_reads import HeapChunks
from accdump.store.dtypes import dtype_from_name, tensor_from_bytes
from accdump.store.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HEAP,
    NUL_GUARD,
    RECORDS,
    REQUIRED_COLUMNS,
    SEGMENT_GLOB,
    Role,
)


@dataclass(frozen=True)
class Record:
    """One captured tensor: where it came from, its layout and statistics."""

    rank: int
    step: int
    order: int
    name: str
    call: int
    role: Role
    arg: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    storage_offset: int
    contiguous: bool
    device: str
    stats: TensorStats
    hash: str
    segment: Path
    heap_offset: int
    heap_nbytes: int

    @property
    def has_tensor(self) -> bool:
        return self.heap_offset >= 0

    @property
    def key(self) -> tuple[int, int, str, int, int, str]:
        """(rank, step, name, call, role, arg): what compare pairs records by."""
        return (self.rank, self.step, self.name, self.call, int(self.role), self.arg)


def _attr(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def column_text(value: Any) -> Any:
    """A string column's value as written (NUL_GUARD kept its trailing NULs)."""
    if not isinstance(value, bytes):
        return value
    return (value[:-1] if value.endswith(NUL_GUARD) else value).decode()


_MAX_OPEN_FILES = 64


class Segment:
    """One segment file: its attributes and record table, read once."""

    def __init__(self, path: Path, rank: int):
        self.path = path
        self.rank = rank
        if not path.is_file():  # opening a FIFO or a device named like a segment could block forever
            raise DumpFormatError(f"{path}: not a regular file")
        try:
            with h5py.File(path, "r") as f:
                self.attrs = {k: _attr(v) for k, v in f.attrs.items()}
                if self.attrs.get("format") != FORMAT_NAME:
                    raise DumpFormatError(
                        f"{path}: not an accdump segment (format attribute is {self.attrs.get('format')!r})"
                    )
                version = int(self.attrs.get("format_version", -1))
                if version != FORMAT_VERSION:
                    raise DumpFormatError(
                        f"{path}: format version {version} is not supported "
                        f"(this accdump reads version {FORMAT_VERSION})"
                    )
                if RECORDS not in f or HEAP not in f:
                    raise DumpFormatError(f"{path}: missing the {RECORDS!r} or {HEAP!r} dataset")
                rows = f[RECORDS][...]
                heap = f[HEAP]
                if not isinstance(heap, h5py.Dataset) or heap.ndim != 1 or heap.dtype != np.uint8:
                    raise DumpFormatError(f"{path}: the {HEAP!r} dataset is not a 1-d uint8 array")
                self.heap_size = int(heap.shape[0])
        except DumpFormatError:
            raise
        except Exception as exc:  # h5py raises OSError / KeyError / ValueError on damaged files
            raise DumpFormatError(f"{path}: unreadable (truncated or corrupt HDF5 file): {exc}") from exc
        missing = set(REQUIRED_COLUMNS) - set(rows.dtype.names or ())
        if missing:
            raise DumpFormatError(f"{path}: record table lacks columns {sorted(missing)}")
        self.rows = rows

    def records(self) -> Iterator[Record]:
        for i, r in enumerate(self.rows):
            try:
                rec = self._record(r)
            except (ValueError, OverflowError, UnicodeDecodeError) as exc:
                raise DumpFormatError(f"{self.path}: record {i} is corrupt: {exc}") from exc
            if rec.heap_offset >= 0 and (
                rec.heap_offset + rec.heap_nbytes > self.heap_size or rec.heap_nbytes < 0
            ):
                raise DumpFormatError(
                    f"{self.path}: record {i} ({rec.name!r}) points outside the tensor heap"
                )
            yield rec

    def _record(self, r: np.void) -> Record:
        ndim = int(r["ndim"])
        if not 0 <= ndim <= len(r["shape"]):
            raise ValueError(f"ndim {ndim} out of range")
        return Record(
            rank=self.rank,
            step=int(r["step"]),
            order=int(r["order"]),
            name=column_text(r["name"]),
            call=int(r["call"]),
            role=Role(int(r["role"])),
            arg=column_text(r["arg"]),
            kind=column_text(r["kind"]),
            dtype=column_text(r["dtype"]),
            shape=tuple(int(v) for v in r["shape"][:ndim]),
            strides=tuple(int(v) for v in r["strides"][:ndim]),
            storage_offset=int(r["storage_offset"]),
            contiguous=bool(r["contiguous"]),
            device=column_text(r["device"]),
            stats=TensorStats.from_vector([float(r[f]) for f in STATS_FIELDS]),
            hash=column_text(r["hash"]),
            segment=self.path,
            heap_offset=int(r["heap_offset"]),
            heap_nbytes=int(r["heap_nbytes"]),
        )


class Dump:
    """A dump directory: ranks, their segments, records and tensors."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.exists():
            raise DumpFormatError(f"{self.path}: no such dump directory")
        if self.path.is_file():
            raise DumpFormatError(f"{self.path}: a dump is a directory (rankNNNNN/seg*.h5), got a file")
        self._rank_dirs: dict[int, Path] = {}
        for d in sorted(self.path.glob("rank*")):
            suffix = d.name.removeprefix("rank")
            if d.is_dir() and suffix.isdigit():
                self._rank_dirs[int(suffix)] = d
        if not self._rank_dirs:
            raise DumpFormatError(f"{self.path}: holds no rankNNNNN directories: not an accdump dump")
        self._open: dict[Path, h5py.File] = {}  # segment files kept open for tensor reads
        self._chunk_tables: dict[Path, HeapChunks | None] = {}
        # held across each read: compare reads from threads, and close() must not pull a file
        # from under a read (h5py serialises reads anyway, so this costs no parallelism)
        self._lock = threading.RLock()

    def _heap(self, segment: Path) -> Any:
        f = self._open.get(segment)
        if f is None:
            if len(self._open) >= _MAX_OPEN_FILES:
                self.close()
            f = self._open[segment] = h5py.File(segment, "r")
        return f[HEAP]

    def _chunks(self, segment: Path) -> HeapChunks | None:
        """Where the heap chunks of `segment` lie, for reads without libhdf5 (None: read through it)."""
        if segment in self._chunk_tables:
            return self._chunk_tables[segment]
        table = None
        if _fletcher32() is not None:
            with self._lock:
                try:
                    table = HeapChunks.locate(segment, self._heap(segment))
                except Exception:  # a damaged file: libhdf5 reports it on the read
                    table = None
        self._chunk_tables[segment] = table
        return table

    def close(self) -> None:
        """Closes the segment files opened to read tensors (reopened when needed)."""
        with self._lock:
            for f in self._open.values():
                f.close()
            self._open.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass

    @property
    def ranks(self) -> list[int]:
        return sorted(self._rank_dirs)

    def segment_paths(self, rank: int) -> list[Path]:
        # temporary names (.segN.h5.tmp) of a writer that died are ignored by the glob
        return sorted(self._rank_dirs[rank].glob(SEGMENT_GLOB))

    @cached_property
    def _segments(self) -> dict[int, list[Segment]]:
        return {rank: [Segment(p, rank) for p in self.segment_paths(rank)] for rank in self.ranks}

    def meta(self, rank: int | None = None) -> dict[str, Any]:
        """The run's metadata (root attributes) as written by `rank` (default: the first)."""
        segs = self._segments[self.ranks[0] if rank is None else rank]
        if not segs:
            return {}
        meta = {k: v for k, v in segs[0].attrs.items() if k not in ("segment", "steps")}
        for key in ("command_line", "user_metadata"):
            if isinstance(meta.get(key), str):
                try:
                    meta[key] = json.loads(meta[key])
                except ValueError as exc:
                    raise DumpFormatError(
                        f"{segs[0].path}: attribute {key!r} is not valid JSON: {exc}"
                    ) from exc
        return meta

    def steps(self, rank: int | None = None) -> list[int]:
        ranks = self.ranks if rank is None else [rank]
        found = {int(s) for r in ranks for seg in self._segments[r] for s in np.unique(seg.rows["step"])}
        return sorted(found)

    def records(
        self,
        rank: int | None = None,
        step: int | None = None,
        name: str | None = None,
        role: Role | None = None,
    ) -> Iterator[Record]:
        """Records in execution order (per rank), optionally filtered; `name` is a glob."""
        for r in self.ranks if rank is None else [rank]:
            for seg in self._segments[r]:
                for rec in seg.records():
                    if step is not None and rec.step != step:
                        continue
                    if role is not None and rec.role != role:
                        continue
                    if name is not None and not fnmatch.fnmatchcase(rec.name, name):
                        continue
                    yield rec

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def __len__(self) -> int:
        return sum(len(seg.rows) for segs in self._segments.values() for seg in segs)

    def nbytes(self) -> int:
        return sum(p.stat().st_size for r in self.ranks for p in self.segment_paths(r))

    def tensor(self, record: Record) -> torch.Tensor:
        """The full tensor of `record` (bit-exact, original dtype and shape; contiguous)."""
        if not record.has_tensor:
            raise DumpFormatError(
                f"{record.name} ({record.role.name.lower()} {record.arg}, step {record.step}) "
                "was recorded without its tensor (use --mode tensor)"
            )
        where = f"{record.segment}: tensor of {record.name!r} (step {record.step})"
        try:
            with self._lock:
                raw = self._heap(record.segment)[record.heap_offset : record.heap_offset + record.heap_nbytes]
        except Exception as exc:  # a checksum mismatch or a damaged file
            raise DumpFormatError(f"{where} cannot be read: {exc}") from exc
        try:
            return tensor_from_bytes(raw, dtype_from_name(record.dtype), record.shape)
        except DumpFormatError as exc:
            raise DumpFormatError(f"{where}: {exc}") from exc

    def read_into(self, record: Record, start: int, out: np.ndarray) -> None:
        """Bytes [start, start + out.size) of `record`'s stored tensor into the uint8 array `out`:
        big tensors are read piece by piece into reused buffers."""
        if not record.has_tensor or start < 0 or start + out.size > record.heap_nbytes:
            raise DumpFormatError(f"{record.name!r}: bytes [{start}, {start + out.size}) are not stored")
        begin = record.heap_offset + start
        chunks = self._chunks(record.segment)
        if chunks is not None:
            try:
                if chunks.read_into(begin, out, _fletcher32()):
                    return
            except OSError:
                pass  # libhdf5 reads it below, or says why it cannot
        try:
            with self._lock:
                heap = self._heap(record.segment)
                heap.read_direct(out, np.s_[begin : begin + out.size], np.s_[0 : out.size])
        except Exception as exc:
            raise DumpFormatError(
                f"{record.segment}: tensor of {record.name!r} (step {record.step}) cannot be read: {exc}"
            ) from exc


@functools.cache
def _fletcher32() -> Callable[[np.ndarray], int] | None:
    """The native Fletcher-32 (libhdf5's, bit for bit), if the extension has it."""
    if not ops.native_available("cpu"):
        return None
    try:
        op = torch.ops.accdump.fletcher32.default
    except (AttributeError, RuntimeError):
        return None  # an extension built before it existed
    return lambda data: int(op(torch.from_numpy(data)))


def load(path: str | os.PathLike[str]) -> Dump:
    """Opens a dump directory for reading."""
    return Dump(path)
