"""The background thread that turns finished steps into segment files.

The main thread never waits on the device: it hands a step's host buffers and CUDA events to a
bounded queue (so memory stays bounded when the disk is slower than the run) and goes on.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time

import numpy as np
import torch

from accdump.capture.step_buffer import CHUNK_ROWS, NATIVE_DTYPES, Capture, StepPayload
from accdump.errors import AccdumpError, RecordWriteError
from accdump.store.dtypes import dtype_name, tensor_to_bytes
from accdump.store.record_table import (
    INT_COLUMNS,
    STRING_COLUMNS,
    StepColumns,
    build_table,
    heap_layout,
    hex_digests,
    string_columns,
)
from accdump.store.schema import STATS_FIELDS, nul_guarded
from accdump.store.writer_process import LocalSegments, SegmentProcess

MAX_BATCH_STEPS = 64  # steps one segment may hold (when they queued up)
_NATIVE_DTYPE_NAMES = [dtype_name(d) for d in NATIVE_DTYPES]


def _heap(tensors: list[torch.Tensor]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The heap pieces of distinct host tensors, with each one's offset and size in the heap."""
    heap = [tensor_to_bytes(t) for t in tensors]
    sizes = np.fromiter((h.size for h in heap), dtype=np.int64, count=len(heap))
    return heap, heap_layout(sizes), sizes


def replay_rows(p: StepPayload) -> tuple[np.ndarray, list[np.ndarray]]:
    """The record table and heap of a CUDA graph replay: the graph's table, built once, with this
    replay's step, statistics, fingerprints and tensors."""
    assert p.replay is not None
    template, tensors = p.replay
    rows = template.table().copy()
    rows["step"] = p.step
    for dev, (where, idx) in template.stats_rows.items():
        stats = torch.cat(p.stats[dev]).numpy()[idx]
        for k, f in enumerate(STATS_FIELDS):
            rows[f][where] = stats[:, k]
    for dev, (where, idx) in template.hash_rows.items():
        rows["hash"][where] = hex_digests(torch.cat(p.hashes[dev]).numpy()[idx])
    heap, offsets, sizes = _heap(tensors)
    buffer_of = template.buffer_of
    stored = buffer_of >= 0
    rows["heap_offset"][stored] = offsets[buffer_of[stored]]
    rows["heap_nbytes"][stored] = sizes[buffer_of[stored]]
    return rows, heap


def native_columns(p: StepPayload, resolve: bool = False) -> tuple[StepColumns, list[np.ndarray]]:
    """The records accdump._C.StepCapture made of step `p`, as columns whose statistics rows
    follow those of the Python records of the step, device by device, and their heap pieces.
    Their strings stay indices into the step's labels (resolved by the segment writer) unless
    `resolve`: the columns are then to be merged with those of Python records."""
    nat = p.native
    assert nat is not None
    ints = nat.ints.numpy()
    n = len(ints)
    slot = np.full(n, -1, dtype=np.int64)
    heap = [tensor_to_bytes(t) for t in nat.tensors.values()]
    if heap:  # records are in order: find each stored one's position by its order
        slot[np.searchsorted(ints[:, 0], np.fromiter(nat.tensors, dtype=np.int64))] = np.arange(len(heap))
    python_rows = {dev: sum(len(c) for c in chunks) for dev, chunks in p.stats.items()}
    row_base = np.array([python_rows.get(d, 0) for d in nat.devices], dtype=np.int64)
    device_id = ints[:, 4]
    n_strings = len(nat.strings)
    sc = StepColumns(
        p.step,
        ints={
            "order": ints[:, 0],
            "call": ints[:, 1],
            "role": ints[:, 2],
            "storage_offset": ints[:, 5],
            "contiguous": ints[:, 6],
            "stats_index": ints[:, 7] + row_base[device_id] if python_rows else ints[:, 7],
            "hash_index": np.full(n, -1, dtype=np.int64),
        },
        string_ids={
            "name": ints[:, 8],
            "arg": ints[:, 9],
            "kind": ints[:, 10],
            "dtype": ints[:, 3] + n_strings,
            "device": device_id + (n_strings + len(_NATIVE_DTYPE_NAMES)),
        },
        labels=[*nat.strings, *_NATIVE_DTYPE_NAMES, *nat.devices],
        ndims=nat.ndims.numpy(),
        shapes=nat.shapes.numpy(),
        strides=nat.strides.numpy(),
        heap_slot=slot,
    )
    if resolve:
        sc.strings, sc.string_ids, sc.labels = string_columns(sc), {}, []
    return sc, heap


def merged_columns(a: StepColumns, b: StepColumns) -> StepColumns:
    """The records of `a` and `b` (one step's, whose orders interleave) in order."""
    order = np.concatenate([a.ints["order"], b.ints["order"]])
    perm = np.argsort(order, kind="stable")
    ndims = np.concatenate([a.ndims, b.ndims])
    ends = np.cumsum(ndims)
    # the dimensions of record perm[i] lie at ends[perm[i]] - ndims[perm[i]] ...
    sorted_ndims = ndims[perm]
    total = int(ends[-1]) if len(ends) else 0
    new_starts = np.cumsum(sorted_ndims) - sorted_ndims
    dims = np.repeat(ends[perm] - sorted_ndims - new_starts, sorted_ndims) + np.arange(total)

    def slots(c: StepColumns) -> np.ndarray:
        return c.heap_slot if len(c.heap_slot) else np.full(len(c), -1, dtype=np.int64)

    return StepColumns(
        a.step,
        ints={k: np.concatenate([a.ints[k], b.ints[k]])[perm] for k in INT_COLUMNS},
        strings={k: np.concatenate([a.strings[k], b.strings[k]])[perm] for k in STRING_COLUMNS},
        ndims=sorted_ndims,
        shapes=np.concatenate([a.shapes, b.shapes])[dims],
        strides=np.concatenate([a.strides, b.strides])[dims],
        stats={**a.stats, **b.stats},
        hashes=a.hashes,
        heap_slot=np.concatenate([slots(a), slots(b)])[perm],
    )


def step_columns(p: StepPayload) -> tuple[StepColumns, list[np.ndarray]]:
    """One step as arrays and heap pieces, ready for its table (record_table.build_table), after
    its device work completed: each capture field converted at once, at C speed. Records made
    natively join those made in Python, in order."""
    if p.replay is not None:
        table, replay_heap = replay_rows(p)
        return StepColumns(p.step, table=table), replay_heap
    if p.native is None:
        return python_columns(p)
    nat, nat_heap = native_columns(p, resolve=bool(p.captures))
    stats = {dev: torch.cat(chunks).numpy() for dev, chunks in p.stats.items()}
    for dev, chunks in zip(p.native.devices, p.native.rows, strict=True):
        rows = torch.cat(chunks).numpy()
        stats[dev] = np.concatenate([stats[dev], rows]) if dev in stats else rows
    if not p.captures:
        nat.stats = stats
        return nat, nat_heap
    py, heap = python_columns(p)
    nat.heap_slot[nat.heap_slot >= 0] += len(heap)
    merged = merged_columns(py, nat)
    merged.stats = stats
    return merged, heap + nat_heap


def python_columns(p: StepPayload) -> tuple[StepColumns, list[np.ndarray]]:
    """The records of step `p` made in Python (its `captures`) as columns, and its heap pieces."""
    if not p.captures:
        return StepColumns(p.step), []
    n = len(p.captures)
    cols = dict(zip(Capture._fields, zip(*p.captures, strict=True), strict=True))
    ndims = np.fromiter(map(len, cols["shape"]), dtype=np.int64, count=n)
    total = int(ndims.sum())
    sc = StepColumns(
        p.step,
        ints={c: np.fromiter(cols[c], dtype=np.int64, count=n) for c in INT_COLUMNS},
        strings={c: np.array([nul_guarded(v) for v in cols[c]], dtype=str) for c in STRING_COLUMNS},
        ndims=ndims,
        shapes=np.fromiter(itertools.chain.from_iterable(cols["shape"]), dtype=np.int64, count=total),
        strides=np.fromiter(itertools.chain.from_iterable(cols["strides"]), dtype=np.int64, count=total),
        stats={dev: torch.cat(chunks).numpy() for dev, chunks in p.stats.items()},
        hashes={dev: torch.cat(chunks).numpy() for dev, chunks in p.hashes.items()},
    )
    tensors = cols["tensor"]
    heap: list[np.ndarray] = []
    if tensors.count(None) != n:
        slot = np.full(n, -1, dtype=np.int64)
        stored: dict[int, int] = {}  # id(host copy) -> slot: a tensor captured twice is stored once
        for i, t in enumerate(tensors):
            if t is None:
                continue
            k = stored.get(id(t))
            if k is None:
                k = stored[id(t)] = len(heap)
                heap.append(tensor_to_bytes(t))
            slot[i] = k
        sc.heap_slot = slot
    return sc, heap


def payload_rows(p: StepPayload) -> tuple[np.ndarray, list[np.ndarray]]:
    """The record table and heap pieces of one step."""
    sc, heap = step_columns(p)
    return build_table(sc, [int(h.size) for h in heap]), heap


def _payload_bytes(p: StepPayload) -> int:
    """Host memory a queued step holds: its tensor copies and statistics rows."""
    copies = {id(c.tensor): c.tensor for c in p.captures if c.tensor is not None}
    n = sum(t.numel() * t.element_size() for t in copies.values())
    n += sum(t.numel() * t.element_size() for chunks in p.stats.values() for t in chunks)
    if p.native is not None:
        n += sum(t.numel() * t.element_size() for chunks in p.native.rows for t in chunks)
        n += sum(t.numel() * t.element_size() for t in p.native.tensors.values())
        n += 200 * len(p.native.ints)
    if p.replay is not None:
        n += sum(t.numel() * t.element_size() for t in p.replay[1])
    return n + 200 * len(p.captures)


class WriterThread:
    """Writes StepPayloads in order; the first failure stops writing and is kept in `error`.

    Steps that queue up while a segment is being written go into the next segment together
    (up to `max_batch_steps` steps and `max_batch_bytes`): a segment costs a few milliseconds of
    HDF5 work whatever its size, and short steps (decode steps, CUDA graph replays) would
    otherwise leave the writer behind. The queue holds at most `max_pending_steps` steps and
    `max_pending_bytes` of host buffers (one step whatever its size), then submit() waits."""

    def __init__(
        self,
        sink: SegmentProcess | LocalSegments,
        max_pending_steps: int = 32,
        max_pending_bytes: int = 512 << 20,
        max_batch_steps: int | None = None,
        max_batch_bytes: int = 64 << 20,
    ):
        self._sink = sink
        self._max_steps, self._max_bytes = max_pending_steps, max_pending_bytes
        self._max_batch_steps = MAX_BATCH_STEPS if max_batch_steps is None else max_batch_steps
        self._max_batch_bytes = max_batch_bytes
        self._cond = threading.Condition()
        self._pending: collections.deque[tuple[StepPayload | None, int]] = collections.deque()  # None: stop
        self._held_steps = 0  # queued or being written
        self._held_bytes = 0
        self.error: AccdumpError | None = None
        self.steps_written: list[int] = []
        self.segments_written = 0
        self.bytes_written = 0
        self.seconds_writing = 0.0  # in the writer thread: building tables and writing files
        self.seconds_stalled = 0.0  # in the caller: waiting for room in the queue
        self._thread = threading.Thread(target=self._run, name="accdump-writer", daemon=True)
        self._thread.start()

    def submit(self, payload: StepPayload) -> None:
        """Queues a step; blocks while the queue is full (in steps or bytes)."""
        if self.error is not None:
            return
        nbytes = _payload_bytes(payload)
        t0 = time.perf_counter()
        with self._cond:
            while self._held_steps and (
                self._held_steps >= self._max_steps or self._held_bytes + nbytes > self._max_bytes
            ):
                self._cond.wait()
            self._pending.append((payload, nbytes))
            self._held_steps += 1
            self._held_bytes += nbytes
            self._cond.notify_all()
        self.seconds_stalled += time.perf_counter() - t0

    def drain(self) -> None:
        """Waits until every queued step is written (before a CUDA graph capture: the thread then
        makes no CUDA call while the capture runs)."""
        with self._cond:
            while self._held_steps:
                self._cond.wait()

    def close(self) -> None:
        """Writes what is queued, then stops the thread and releases the directory lock."""
        with self._cond:
            self._pending.append((None, 0))
            self._cond.notify_all()
        self._thread.join()
        self._sink.close()

    def _take_batch(self) -> tuple[list[tuple[StepPayload, int]], bool]:
        """The next steps to write together, and whether the thread is to stop after them."""
        with self._cond:
            while not self._pending:
                self._cond.wait()
            batch: list[tuple[StepPayload, int]] = []
            nbytes = 0
            while self._pending and len(batch) < self._max_batch_steps:
                payload, n = self._pending[0]
                if payload is None:
                    if not batch:
                        self._pending.popleft()
                        return [], True
                    break
                if batch and nbytes + n > self._max_batch_bytes:
                    break
                self._pending.popleft()
                batch.append((payload, n))
                nbytes += n
            return batch, False

    def _run(self) -> None:
        while True:
            batch, stop = self._take_batch()
            if stop:
                return
            try:
                if self.error is None:  # after a failure: drain without writing
                    self._write([p for p, _ in batch])
            finally:
                count, released = len(batch), sum(n for _, n in batch)
                batch = []  # the steps' host buffers are freed before their room is given back
                with self._cond:
                    self._held_steps -= count
                    self._held_bytes -= released
                    self._cond.notify_all()

    def _write(self, items: list[StepPayload]) -> None:
        steps = [p.step for p in items]
        try:
            for p in items:
                for ev in p.events:
                    ev.synchronize()
            t0 = time.perf_counter()
            _, size = self._sink.write_steps([step_columns(p) for p in items], steps)
            self.seconds_writing += time.perf_counter() - t0
            self.bytes_written += size
            self.segments_written += 1
            self.steps_written.extend(steps)
        except AccdumpError as exc:
            self.error = exc
        except Exception as exc:  # anything else is still a failed write, never a crash of the run
            which = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}..{steps[-1]}"
            self.error = RecordWriteError(f"writing {which} failed: {type(exc).__name__}: {exc}")

    @property
    def seconds_fsync(self) -> float:
        return self._sink.seconds_fsync


__all__ = ["CHUNK_ROWS", "WriterThread", "payload_rows"]
