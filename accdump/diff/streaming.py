"""Pairwise metrics of two recorded tensors read piece by piece.

Memory stays bounded whatever the tensors' size: each side is read in chunks of at most
CHUNK_BYTES into two reused staging buffers (pinned when the metrics run on CUDA), copied to the
device without blocking, and measured there while the next chunk is read. The per-chunk metric
vectors are merged exactly (sums add, maxima take the first chunk reaching them), so the result
equals compare_metrics over the whole tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from accdump import ops
from accdump.store.dtypes import dtype_from_name
from accdump.store.reader import Dump, Record

CHUNK_BYTES = 32 << 20

# Columns of ops.compare_metrics_raw (see ops.PairMetrics).
_MAX_ABS, _ARGMAX, _MAX_REL = 4, 5, 8


def streamable(g: Record, t: Record) -> bool:
    """True when both records hold full tensors of floating dtypes that compare_metrics reads,
    with the same values in the same order (equal shapes up to size-1 dimensions)."""
    if not (g.has_tensor and t.has_tensor):
        return False
    names = {str(d).removeprefix("torch.") for d in ops.METRICS_DTYPES}
    if g.dtype not in names or t.dtype not in names:
        return False
    return [s for s in g.shape if s != 1] == [s for s in t.shape if s != 1]


class Staging:
    """Two slots of reusable host buffers, one per side, and the event that frees each slot."""

    def __init__(self, device: torch.device, chunk_bytes: int | None = None):
        self.device = device
        self.chunk_bytes = chunk_bytes or CHUNK_BYTES
        self.pinned = device.type == "cuda"
        self._bufs: dict[tuple[int, int], torch.Tensor] = {}
        self._events: list[torch.cuda.Event | None] = [None, None]

    def buffer(self, slot: int, side: int, nbytes: int) -> torch.Tensor:
        buf = self._bufs.get((slot, side))
        if buf is None or buf.numel() < nbytes:
            size = max(nbytes, min(self.chunk_bytes, 1 << 20))
            buf = torch.empty(size, dtype=torch.uint8, pin_memory=self.pinned)
            self._bufs[(slot, side)] = buf
        return buf[:nbytes]

    def wait(self, slot: int) -> None:
        ev = self._events[slot]
        if ev is not None:
            ev.synchronize()
            self._events[slot] = None

    def release_after_copies(self, slot: int) -> None:
        if self.pinned:
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(self.device))
            self._events[slot] = ev


def chunk_spans(g: Record, t: Record, chunk_bytes: int, align_rows: bool) -> Iterator[tuple[int, int]]:
    """(first element, element count) of each chunk of g and t: at most `chunk_bytes` per side, and
    whole rows (over the last dimension) with `align_rows` when a row fits in a chunk."""
    dg, dt = dtype_from_name(g.dtype), dtype_from_name(t.dtype)
    numel = math.prod(g.shape)
    per = max(1, chunk_bytes // max(dg.itemsize, dt.itemsize))
    row = g.shape[-1] if g.shape else 1
    if align_rows and row <= per:
        per -= per % row
    for start in range(0, numel, per):
        yield start, min(per, numel - start)


def _chunks(g: Record, t: Record, staging: Staging, align_rows: bool):
    """(slot, first element, element count, dtypes) of each chunk, once its staging slot is free."""
    dg, dt = dtype_from_name(g.dtype), dtype_from_name(t.dtype)
    for i, (start, n) in enumerate(chunk_spans(g, t, staging.chunk_bytes, align_rows)):
        slot = i % 2
        staging.wait(slot)
        yield slot, start, n, dg, dt


def _read(
    dump: Dump, rec: Record, dtype: torch.dtype, start: int, n: int, staging: Staging, slot: int, side: int
):
    buf = staging.buffer(slot, side, n * dtype.itemsize)
    dump.read_into(rec, start * dtype.itemsize, buf.numpy())
    return buf.view(dtype).to(staging.device, non_blocking=True)


def streamed_metrics(
    gd: Dump, g: Record, td: Dump, t: Record, atol: float, rtol: float, staging: Staging
) -> ops.PairMetrics:
    """compare_metrics of g's and t's stored tensors, read chunk by chunk."""
    vectors, starts = [], []
    for slot, start, n, dg, dt in _chunks(g, t, staging, align_rows=False):
        a = _read(gd, g, dg, start, n, staging, slot, 0)
        b = _read(td, t, dt, start, n, staging, slot, 1)
        staging.release_after_copies(slot)
        vectors.append(ops.compare_metrics_raw(a, b, atol, rtol))
        starts.append(start)
    return merged_metrics(vectors, starts, atol, rtol)


def merged_metrics(
    vectors: list[torch.Tensor], starts: list[int], atol: float, rtol: float
) -> ops.PairMetrics:
    """One pair's metrics from the compare_metrics vectors of its chunks starting at `starts`."""
    if not vectors:  # empty tensors
        empty = torch.zeros(0)
        return ops.compare_metrics(empty, empty, atol, rtol)
    return ops.PairMetrics.from_vector(merge_metric_vectors(torch.stack(vectors).cpu(), starts))


def merge_metric_vectors(v: torch.Tensor, starts: list[int]) -> list[float]:
    """One compare_metrics vector from per-chunk vectors [C, 14] of chunks starting at `starts`."""
    out = v.sum(0)
    out[_MAX_ABS] = v[:, _MAX_ABS].max()
    out[_MAX_REL] = v[:, _MAX_REL].max()
    out[_ARGMAX] = -1
    for i in range(v.shape[0]):
        if v[i, _ARGMAX] >= 0 and v[i, _MAX_ABS] == out[_MAX_ABS]:
            out[_ARGMAX] = v[i, _ARGMAX] + starts[i]
            break
    return out.tolist()


def streamed_row_cosine(gd: Dump, g: Record, td: Dump, t: Record, staging: Staging) -> torch.Tensor:
    """Cosine per row (over the last dimension) of g's and t's stored tensors, float64 on the host."""
    parts = []
    for slot, start, n, dg, dt in _chunks(g, t, staging, align_rows=True):
        a = _read(gd, g, dg, start, n, staging, slot, 0)
        b = _read(td, t, dt, start, n, staging, slot, 1)
        staging.release_after_copies(slot)
        row = g.shape[-1] if g.shape else 1
        if n % row:  # a row longer than a chunk: one row at a time is still bounded by the chunk
            return _long_rows_cosine(gd, g, td, t, staging)
        parts.append(ops.rowwise_metrics_raw(a.view(-1, row), b.view(-1, row))[:, 0])
    return torch.cat(parts).cpu() if parts else torch.zeros(0, dtype=torch.float64)


def _long_rows_cosine(gd: Dump, g: Record, td: Dump, t: Record, staging: Staging) -> torch.Tensor:
    """Per-row cosine when a row is longer than a chunk: each row's dot and norms summed over chunks."""
    row = g.shape[-1]
    rows = math.prod(g.shape) // row
    out = np.zeros(rows)
    for r in range(rows):
        dot = sa = sb = 0.0
        for c0 in range(0, row, max(1, staging.chunk_bytes // 8)):
            n = min(max(1, staging.chunk_bytes // 8), row - c0)
            dg, dt = dtype_from_name(g.dtype), dtype_from_name(t.dtype)
            staging.wait(0)
            a = _read(gd, g, dg, r * row + c0, n, staging, 0, 0).double()
            b = _read(td, t, dt, r * row + c0, n, staging, 0, 1).double()
            staging.release_after_copies(0)
            fin = torch.isfinite(a) & torch.isfinite(b)
            a, b = torch.where(fin, a, 0.0), torch.where(fin, b, 0.0)
            dot += float((a * b).sum())
            sa += float((a * a).sum())
            sb += float((b * b).sum())
        out[r] = dot / math.sqrt(sa * sb) if sa > 0 and sb > 0 else (1.0 if sa == sb == 0 else 0.0)
    return torch.from_numpy(out)
