"""Recording inside CUDA graphs.

A hook or probe that fires while a graph is captured runs once, at capture; on replay only the
kernels it enqueued run again. So while a recorder is active, capture is redirected: the
statistics (and fingerprint) kernels of every captured tensor go into the graph, writing rows
that belong to the recorder, and full tensors (tensor mode, filtered, within a memory budget)
are copied into device buffers inside the graph. After each `CUDAGraph.replay()` the recorder
takes those rows and buffers as one step, named as at capture time, copying them to the host
without blocking. The capture pass itself computes nothing and is no step.

Row buffers and tensor copies are allocated from the graph's private memory pool during capture,
as the model's own activations are, and live as long as the graph does.

Replays must stay cheap, so statistics are not one kernel per tensor: captured tensors are held
and measured in batches (tensor_stats_multi_into: 24 tensors a launch; fingerprints: 64) when
enough have gathered, at the end of the capture, and before any op that writes into one of them
(a dispatch mode watches the ops while the capture runs). Held tensors keep their memory until
their batch is enqueued, so the graph's memory pool grows by at most FLUSH_BYTES.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from accdump.capture.step_buffer import CHUNK_ROWS, Capture, DeviceRows, StepBuffer, StepPayload

if TYPE_CHECKING:
    from accdump.capture.recorder import Recorder

DEFAULT_TENSOR_BUDGET = 1 << 30  # bytes of device copies one graph may hold in tensor mode
FLUSH_COUNT = 24 * 8  # held tensors that trigger a batch
FLUSH_BYTES = 256 << 20  # held bytes that trigger a batch


class PendingStats:
    """Captured tensors whose statistics (or fingerprint) kernels are not enqueued yet."""

    def __init__(self, workspace: torch.Tensor):
        self.workspace = workspace
        self.items: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self.fingerprints: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self.storages: set[int] = set()
        self.nbytes = 0
        self.launches = 0

    def add(self, t: torch.Tensor, rows: torch.Tensor, row: int) -> None:
        """Holds `t` for its statistics into rows[row]."""
        self._hold(t)
        self.items.append((t, rows, row))
        self._maybe_flush()

    def add_fingerprint(self, t: torch.Tensor, rows: torch.Tensor, row: int) -> None:
        """Holds `t` for its fingerprint into rows[row] (int64 [R, 2])."""
        self._hold(t)
        self.fingerprints.append((t, rows, row))
        self._maybe_flush()

    def _hold(self, t: torch.Tensor) -> None:
        self.storages.add(t.untyped_storage().data_ptr())
        self.nbytes += t.numel() * t.element_size()

    def _maybe_flush(self) -> None:
        if len(self.items) + len(self.fingerprints) >= FLUSH_COUNT or self.nbytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Enqueues the statistics of every held tensor (one call per row chunk) and lets them go."""
        from accdump import ops

        for rows, xs, idx in _by_chunk(self.items):
            ops.tensor_stats_multi_into(xs, rows, idx, self.workspace)
            self.launches += -(-len(xs) // 24)
        for rows, xs, idx in _by_chunk(self.fingerprints):
            ops.tensor_fingerprint_multi_into(xs, rows, idx)
            self.launches += -(-len(xs) // 64)
        self.items.clear()
        self.fingerprints.clear()
        self.storages.clear()
        self.nbytes = 0


def _by_chunk(
    items: list[tuple[torch.Tensor, torch.Tensor, int]],
) -> list[tuple[torch.Tensor, list[torch.Tensor], list[int]]]:
    """Held items grouped by the row buffer they go into: (rows, tensors, row indices)."""
    groups: dict[int, tuple[torch.Tensor, list[torch.Tensor], list[int]]] = {}
    for t, rows, row in items:
        group = groups.setdefault(id(rows), (rows, [], []))
        group[1].append(t)
        group[2].append(row)
    return list(groups.values())


class _MutationGuard(TorchDispatchMode):
    """While a capture runs: enqueues the held statistics before any op writes into a held tensor."""

    def __init__(self, pending: PendingStats):
        super().__init__()
        self.pending = pending

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if self.pending.storages and func._schema.is_mutable and self._writes_held(func, args, kwargs):
            self.pending.flush()
        return func(*args, **kwargs)

    def _writes_held(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        held = self.pending.storages
        for i, a in enumerate(func._schema.arguments):
            if a.alias_info is None or not a.alias_info.is_write:
                continue
            value = args[i] if i < len(args) else kwargs.get(a.name)
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in held:
                    return True
        return False


class ReplayTemplate:
    """The record table of a graph's replays, built once (in the writer thread, at the first
    replay written): from one replay to the next only the step, the statistics, the fingerprints
    and the tensor bytes change. Also says which rows hold which statistics row and tensor copy."""

    def __init__(self, captures: list[Capture]):
        self.captures = [c._replace(tensor=None) for c in captures]
        buffers: dict[int, int] = {}
        self.buffers: list[torch.Tensor] = []  # distinct device copies, in capture order
        of = []
        for c in captures:
            if c.tensor is None:
                of.append(-1)
                continue
            j = buffers.get(id(c.tensor))
            if j is None:
                j = buffers[id(c.tensor)] = len(self.buffers)
                self.buffers.append(c.tensor)
            of.append(j)
        self.buffer_of = np.asarray(of, dtype=np.int64)
        devices = np.asarray([c.device for c in captures], dtype=object)
        stats_index = np.asarray([c.stats_index for c in captures], dtype=np.int64)
        hash_index = np.asarray([c.hash_index for c in captures], dtype=np.int64)
        self.stats_rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.hash_rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for dev in sorted(set(devices.tolist())):
            where = np.flatnonzero(devices == dev)
            self.stats_rows[dev] = (where, stats_index[where])
            hashed = where[hash_index[where] >= 0]
            if len(hashed):
                self.hash_rows[dev] = (hashed, hash_index[hashed])
        self._table: np.ndarray | None = None

    def table(self) -> np.ndarray:
        if self._table is None:
            from accdump.capture.step_buffer import StepPayload
            from accdump.capture.writer_thread import payload_rows

            def zeros(
                rows: dict[str, tuple[np.ndarray, np.ndarray]], width: int
            ) -> dict[str, list[torch.Tensor]]:
                return {
                    d: [
                        torch.zeros(
                            int(idx.max()) + 1, width, dtype=torch.float64 if width > 2 else torch.int64
                        )
                    ]
                    for d, (_, idx) in rows.items()
                }

            p = StepPayload(0, self.captures, zeros(self.stats_rows, 13), zeros(self.hash_rows, 2), [])
            self._table, _ = payload_rows(p)
        return self._table


@dataclass
class GraphProbes:
    """What the recorder enqueued into one captured graph."""

    buf: StepBuffer
    device: torch.device
    pending: PendingStats | None = None
    guard: _MutationGuard | None = None
    tensor_bytes: int = 0
    tensors_skipped: int = 0
    workspace: torch.Tensor | None = None
    template: ReplayTemplate | None = None
    replays: int = 0
    failed: str = ""  # why the capture's probes could not be completed, if they could not
    saved_buf: StepBuffer | None = field(default=None, repr=False)

    def describe(self) -> str:
        n = len(self.buf.captures)
        rows = sum(len(r.chunks) * CHUNK_ROWS for r in self.buf.stats.values())
        text = f"{n} captures ({rows * 13 * 8 // 1024} KiB of statistics rows"
        if self.pending is not None:
            text += f", {self.pending.launches} statistics launches"
        text += ")"
        if self.tensor_bytes:
            text += f", {self.tensor_bytes / 2**20:.1f} MiB of device copies of full tensors"
        if self.tensors_skipped:
            text += f"; {self.tensors_skipped} full tensors left out (over the graph tensor budget)"
        return text


def _clone_rows(rows: DeviceRows, into: DeviceRows) -> int:
    """Appends copies of `rows`' chunks to `into` (made on the device, in stream order, so the
    next replay cannot overwrite them before they reach the host); returns the index offset."""
    base = len(into.chunks) * CHUNK_ROWS
    into.chunks.extend(c.clone() for c in rows.chunks)
    into.next_row = CHUNK_ROWS  # the next row taken opens a fresh chunk after the copies
    return base


def replay_payload(step: int, probes: GraphProbes) -> StepPayload:
    """A replay as a step of its own: its rows and tensor copies on their way to the host (read
    by the writer after the events), described by the graph's template."""
    assert probes.template is not None
    g = probes.buf
    stats = {str(d): rows.to_host() for d, rows in g.stats.items()}
    hashes = {str(d): rows.to_host() for d, rows in g.hashes.items()}
    tensors = []
    for b in probes.template.buffers:
        host = torch.empty(b.shape, dtype=b.dtype, pin_memory=True)
        host.copy_(b, non_blocking=True)
        tensors.append(host)
    events = []
    for d in {*g.stats, *g.hashes}:
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(d))
        events.append(ev)
    return StepPayload(step, [], stats, hashes, events, replay=(probes.template, tensors))


def merge_replay(buf: StepBuffer, probes: GraphProbes) -> None:
    """Adds what one replay of a captured graph computed to the step buffer `buf`."""
    g = probes.buf
    stats_base = {str(d): _clone_rows(rows, buf.stats_rows(d)) for d, rows in g.stats.items()}
    hash_base = {str(d): _clone_rows(rows, buf.hash_rows(d)) for d, rows in g.hashes.items()}
    calls_before = dict(buf.calls)
    copies: dict[int, torch.Tensor] = {}
    for c in g.captures:
        host = None
        if c.tensor is not None:
            host = copies.get(id(c.tensor))
            if host is None:
                pinned = c.tensor.is_cuda
                host = torch.empty(c.tensor.shape, dtype=c.tensor.dtype, pin_memory=pinned)
                host.copy_(c.tensor, non_blocking=pinned)
                copies[id(c.tensor)] = host
        buf.captures.append(
            c._replace(
                order=buf.next_order(),
                call=c.call + calls_before.get(c.name, 0),
                stats_index=c.stats_index + stats_base.get(c.device, 0),
                hash_index=c.hash_index + hash_base[c.device] if c.hash_index >= 0 else -1,
                tensor=host,
            )
        )
    for name, n in g.calls.items():
        buf.calls[name] = calls_before.get(name, 0) + n
    buf.has_tokens = buf.has_tokens or g.has_tokens


class GraphHooks:
    """Wraps torch.cuda.CUDAGraph's capture_begin / capture_end / replay while a recorder is active."""

    _METHODS = ("capture_begin", "capture_end", "replay")

    def __init__(self, recorder: Recorder):
        self._rec = weakref.ref(recorder)
        self._originals: dict[str, Callable[..., Any]] = {}

    def install(self) -> None:
        cls = torch.cuda.CUDAGraph
        for name in self._METHODS:
            self._originals[name] = cls.__dict__.get(name) or getattr(cls, name)
        originals, rec_ref = self._originals, self._rec

        def capture_begin(graph: Any, *args: Any, **kwargs: Any) -> Any:
            rec = rec_ref()
            if rec is not None and rec.enabled:
                rec._graph_capture_begin(graph)  # before the capture: prepares its buffers
            try:
                return originals["capture_begin"](graph, *args, **kwargs)
            except BaseException:
                if rec is not None:
                    rec._graph_capture_end(graph, failed=True)  # no capture: back to eager recording
                raise

        def capture_end(graph: Any, *args: Any, **kwargs: Any) -> Any:
            rec = rec_ref()
            probes = getattr(graph, "_accdump_probes", None)
            if rec is not None and probes is not None:
                try:
                    end_capture(probes)  # the last batch goes into the graph before it closes
                except Exception as exc:  # e.g. a capture the user's code invalidated: close it anyway
                    probes.failed = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            try:
                return originals["capture_end"](graph, *args, **kwargs)
            finally:
                rec = rec_ref()
                if rec is not None:
                    rec._graph_capture_end(graph)

        def replay(graph: Any, *args: Any, **kwargs: Any) -> Any:
            rec = rec_ref()
            if rec is not None and rec._buf is not None and rec._buf.native is not None:
                rec._buf.native.flush()  # the replay rewrites tensors with no version bump
            result = originals["replay"](graph, *args, **kwargs)
            rec = rec_ref()
            probes = getattr(graph, "_accdump_probes", None)
            if rec is not None and rec.enabled:
                if probes is not None:
                    rec._graph_replayed(probes)
                elif not rec._warned_uncaptured_graph:
                    rec._warned_uncaptured_graph = True
                    print(
                        "accdump: a CUDA graph captured while no recorder was active is replayed: its "
                        "replays are not recorded (capture it inside the recording to record them)",
                        file=sys.stderr,
                    )
            return result

        for name, fn in (("capture_begin", capture_begin), ("capture_end", capture_end), ("replay", replay)):
            fn.__wrapped__ = originals[name]  # type: ignore[attr-defined]
            setattr(cls, name, fn)

    def remove(self) -> None:
        cls = torch.cuda.CUDAGraph
        for name, fn in self._originals.items():
            if name in cls.__dict__ and getattr(cls.__dict__[name], "__wrapped__", None) is fn:
                setattr(cls, name, fn)
        self._originals.clear()


def start_capture(rec: Recorder, graph: Any) -> GraphProbes:
    """The buffers of a capture about to begin on the current stream, made before it begins:
    the statistics workspace, the first chunk of rows, the fingerprint kernel's workspace."""
    from accdump import ops

    device = torch.device("cuda", torch.cuda.current_device())
    probes = GraphProbes(StepBuffer(-1), device)
    probes.workspace = ops.stats_workspace(device)
    probes.pending = PendingStats(probes.workspace)
    probes.guard = _MutationGuard(probes.pending)
    probes.guard.__enter__()
    probes.buf.stats_rows(device).take()
    probes.buf.stats_rows(device).next_row = 0  # keep the chunk; the first capture takes row 0
    if rec.mode == "hash":
        probes.buf.hash_rows(device).take()
        probes.buf.hash_rows(device).next_row = 0
        ops.tensor_fingerprint_into(
            torch.zeros(1, device=device), torch.zeros(1, 2, dtype=torch.int64, device=device), 0
        )
    if rec.mode == "tensor":
        print(
            "accdump: capturing a CUDA graph in tensor mode: full tensors of the records it holds are "
            f"copied into device buffers, up to {rec.graph_tensor_bytes / 2**20:.0f} MiB for this graph "
            "(graph_tensor_bytes / --graph-tensor-mb; filter with include / max_tensor_bytes)",
            file=sys.stderr,
        )
    graph._accdump_probes = probes
    return probes


def end_capture(probes: GraphProbes) -> None:
    """Enqueues the held statistics and stops watching ops (the capture is about to close)."""
    if probes.guard is not None:
        probes.guard.__exit__(None, None, None)
        probes.guard = None
    if probes.pending is not None:
        probes.pending.flush()


def finish_capture(probes: GraphProbes) -> None:
    probes.template = ReplayTemplate(probes.buf.captures)
    print(
        f"accdump: CUDA graph captured with {probes.describe()}; each replay is recorded as a step",
        file=sys.stderr,
    )
