"""Streamed metrics of many pairs, read ahead: while the caller handles one pair, a few worker
threads read the next chunks of both dumps and run compare_metrics on them.

Tensor bytes are read straight from the segments' heap chunks and verified by accdump
(store/chunk_reads.py): no lock is held, so the workers' reads, checksums, device copies and
metric kernels all overlap each other and the caller's own work (through libhdf5, without the
native extension, reads take turns under h5py's lock). At most `depth` chunks are queued ahead
of the caller, and each worker reads into its own pair of reused host buffers (pinned for CUDA),
so memory stays bounded
(workers x 2 x chunk_bytes) whatever the number and size of the tensors. The chunks are those of
streamed_metrics and merge in the same order, so the results are identical to a serial comparison;
an error reading a chunk is raised when its pair's turn comes, as it would be serially.
"""

from __future__ import annotations

import os
import queue
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from accdump import ops
from accdump.diff.streaming import chunk_spans, merged_metrics
from accdump.store.dtypes import dtype_from_name
from accdump.store.reader import Record

# reads and checksums run in parallel on as many threads (one core each): up to 4, whose reads
# keep up with a fast disk and the page cache
WORKERS = max(2, min(4, os.cpu_count() or 2))
DEPTH = 2 * WORKERS  # chunks queued ahead of the caller: their results are a few numbers each


@dataclass(frozen=True)
class Job:
    """One pair to measure: its golden and target records and the allclose tolerances."""

    golden: Record
    target: Record
    atol: float
    rtol: float


class Prefetcher:
    """Measures jobs ahead of the caller on `workers` threads (0: in the caller's thread, in turn).

    A context manager: leaving it cancels the chunks not started and waits for those running."""

    def __init__(
        self,
        golden: Any,
        target: Any,
        device: torch.device,
        chunk_bytes: int,
        workers: int = WORKERS,
        depth: int = DEPTH,
    ):
        self.golden, self.target, self.device = golden, target, device
        self.chunk_bytes = chunk_bytes
        self.depth = max(1, depth)
        self._pinned = device.type == "cuda"
        # the workers queue their copies and kernels on the caller's stream, which reads the results
        self._stream = torch.cuda.current_stream(device) if self._pinned else None
        self._slots: queue.SimpleQueue[list[torch.Tensor | None]] = queue.SimpleQueue()
        for _ in range(max(1, workers)):
            self._slots.put([None, None])
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="accdump-compare") if workers else None

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancels the chunks not started and waits for the ones being read (one per worker)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def metrics(self, jobs: Sequence[Job | None]) -> Iterator[ops.PairMetrics | None]:
        """compare_metrics of each job's stored tensors (as streamed_metrics gives them), in the
        jobs' order; None for a None job (a pair the caller measures itself)."""
        pool = self._pool
        if pool is None:
            yield from (None if job is None else self._serial(job) for job in jobs)
            return
        spans = (
            (i, job, start, n)
            for i, job in enumerate(jobs)
            if job is not None
            for start, n in chunk_spans(job.golden, job.target, self.chunk_bytes, align_rows=False)
        )
        pending: deque[tuple[int, int, Future[torch.Tensor]]] = deque()
        for i, job in enumerate(jobs):
            if job is None:
                yield None
                continue
            vectors, starts = [], []
            while True:
                while len(pending) < self.depth and (span := next(spans, None)) is not None:
                    j, chunk_job, start, n = span
                    pending.append((j, start, pool.submit(self._vector, chunk_job, start, n)))
                if not pending or pending[0][0] != i:
                    break
                _, start, future = pending.popleft()
                vectors.append(future.result())
                starts.append(start)
            yield merged_metrics(vectors, starts, job.atol, job.rtol)

    def _serial(self, job: Job) -> ops.PairMetrics:
        spans = list(chunk_spans(job.golden, job.target, self.chunk_bytes, align_rows=False))
        vectors = [self._vector(job, start, n) for start, n in spans]
        return merged_metrics(vectors, [start for start, _ in spans], job.atol, job.rtol)

    def _vector(self, job: Job, start: int, n: int) -> torch.Tensor:
        """compare_metrics_raw of elements [start, start + n) of both tensors, read into a free
        pair of host buffers (there is one: each worker runs one chunk at a time)."""
        bufs = self._slots.get()
        try:
            with torch.cuda.stream(self._stream) if self._stream is not None else nullcontext():
                a = self._read(self.golden, job.golden, start, n, bufs, 0)
                b = self._read(self.target, job.target, start, n, bufs, 1)
                return ops.compare_metrics_raw(a, b, job.atol, job.rtol)
        finally:
            self._slots.put(bufs)

    def _read(
        self, dump: Any, rec: Record, start: int, n: int, bufs: list[torch.Tensor | None], side: int
    ) -> torch.Tensor:
        dtype = dtype_from_name(rec.dtype)
        nbytes = n * dtype.itemsize
        buf = bufs[side]
        if buf is None or buf.numel() < nbytes:
            size = max(nbytes, min(self.chunk_bytes, 1 << 20))
            buf = bufs[side] = torch.empty(size, dtype=torch.uint8, pin_memory=self._pinned)
        view = buf[:nbytes]
        dump.read_into(rec, start * dtype.itemsize, view.numpy())
        # a blocking copy to CUDA (on the CPU, no copy at all): the buffer is free when it returns
        return view.view(dtype).to(self.device)
