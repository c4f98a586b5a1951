"""The background thread that turns finished steps into segment files.

The main thread never waits on the device: it hands a step's host buffers and CUDA events to a
bounded queue (so memory stays bounded when the disk is slower than the run) and goes on.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from accdump.capture.fingerprint import hex_digest
from accdump.capture.step_buffer import CHUNK_ROWS, StepPayload
from accdump.errors import AccdumpError, RecordWriteError
from accdump.ops import STATS_FIELDS
from accdump.store.dtypes import tensor_to_bytes
from accdump.store.schema import RECORD_DTYPE
from accdump.store.writer import SegmentWriter

_STOP = object()


def payload_rows(p: StepPayload) -> tuple[np.ndarray, list[np.ndarray]]:
    """The record table and heap pieces of one step (after its device work completed)."""
    stats = {dev: torch.cat(chunks).numpy() for dev, chunks in p.stats.items() if chunks}
    hashes = {dev: torch.cat(chunks).numpy() for dev, chunks in p.hashes.items() if chunks}
    rows = np.zeros(len(p.captures), dtype=RECORD_DTYPE)
    heap: list[np.ndarray] = []
    offset = 0
    for i, c in enumerate(p.captures):
        r = rows[i]
        r["step"], r["order"], r["name"], r["call"], r["role"] = p.step, c.order, c.name, c.call, c.role
        r["arg"], r["kind"], r["dtype"], r["device"] = c.arg, c.kind, c.dtype, c.device
        r["shape"] = np.asarray(c.shape, dtype=np.int64)
        r["strides"] = np.asarray(c.strides, dtype=np.int64)
        r["storage_offset"], r["contiguous"] = c.storage_offset, c.contiguous
        srow = stats[c.device][c.stats_index]
        for k, f in enumerate(STATS_FIELDS):
            r[f] = srow[k]
        if c.hash_index >= 0:
            h = hashes[c.device][c.hash_index]
            r["hash"] = hex_digest((int(h[0]), int(h[1])))
        else:
            r["hash"] = ""
        if c.tensor is not None:
            raw = tensor_to_bytes(c.tensor)
            r["heap_offset"], r["heap_nbytes"] = offset, raw.size
            heap.append(raw)
            offset += raw.size
        else:
            r["heap_offset"], r["heap_nbytes"] = -1, 0
    return rows, heap


class WriterThread:
    """Writes StepPayloads in order; the first failure stops writing and is kept in `error`."""

    def __init__(self, writer: SegmentWriter, max_pending_steps: int = 2):
        self._writer = writer
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending_steps)
        self.error: AccdumpError | None = None
        self.steps_written: list[int] = []
        self.bytes_written = 0
        self.seconds_writing = 0.0
        self._thread = threading.Thread(target=self._run, name="accdump-writer", daemon=True)
        self._thread.start()

    def submit(self, payload: StepPayload) -> None:
        """Queues a step; blocks while `max_pending_steps` steps are already waiting."""
        if self.error is None:
            self._queue.put(payload)

    def close(self) -> None:
        """Writes what is queued, then stops the thread and releases the directory lock."""
        self._queue.put(_STOP)
        self._thread.join()
        self._writer.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.error is not None:
                continue  # drain without writing after a failure
            assert isinstance(item, StepPayload)
            try:
                for ev in item.events:
                    ev.synchronize()
                t0 = time.perf_counter()
                rows, heap = payload_rows(item)
                path = self._writer.write(rows, heap, {"steps": np.asarray([item.step], dtype=np.int64)})
                self.seconds_writing += time.perf_counter() - t0
                self.bytes_written += path.stat().st_size
                self.steps_written.append(item.step)
            except AccdumpError as exc:
                self.error = exc
            except Exception as exc:  # anything else is still a failed write, never a crash of the run
                self.error = RecordWriteError(f"writing step {item.step} failed: {type(exc).__name__}: {exc}")


__all__ = ["CHUNK_ROWS", "WriterThread", "payload_rows"]
