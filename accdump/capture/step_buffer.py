"""What one step captured: record metadata, statistics rows on each device, full tensors and
fingerprints in flight to the host."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from accdump import ops

CHUNK_ROWS = 256
NATIVE_DTYPES = sorted(ops.STATS_DTYPES, key=str)  # what a native record's dtype id indexes


class Capture(NamedTuple):
    """Metadata of one captured tensor; the numbers arrive later from the device. (A NamedTuple:
    one is made per captured tensor on the hot path, and tuples are the cheapest to build.)"""

    order: int
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
    device: str
    stats_index: int  # row in the step's statistics rows of this device
    tensor: torch.Tensor | None = None  # host copy (pinned for CUDA), filled asynchronously
    hash_index: int = -1


class DeviceRows:
    """float64 [rows, K] buffers on one device, grown in chunks (no reallocation mid-step)."""

    def __init__(self, device: torch.device, width: int, dtype: torch.dtype):
        self.device, self.width, self.dtype = device, width, dtype
        self.chunks: list[torch.Tensor] = []
        self.next_row = CHUNK_ROWS

    def take(self) -> tuple[torch.Tensor, int, int]:
        """A free row: (its chunk, its row in the chunk, its index over all chunks)."""
        if self.next_row == CHUNK_ROWS:
            self.chunks.append(torch.zeros(CHUNK_ROWS, self.width, dtype=self.dtype, device=self.device))
            self.next_row = 0
        row = self.next_row
        self.next_row += 1
        return self.chunks[-1], row, (len(self.chunks) - 1) * CHUNK_ROWS + row

    def to_host(self) -> list[torch.Tensor]:
        """Copies every chunk to host memory without blocking (pinned for CUDA)."""
        return host_chunks(self.chunks)


class Seen:
    """A tensor already captured in this step, valid while it is alive and its version unchanged:
    its numbers, and the dtype and device names its captures repeat."""

    __slots__ = ("device", "dtype", "hash_index", "host", "ref", "stats_index", "version")

    def __init__(self, ref: Any, version: int, dtype: str, device: str, stats_index: int):
        self.ref = ref  # weakref.ref to the tensor
        self.version = version
        self.dtype = dtype
        self.device = device
        self.stats_index = stats_index
        self.host: torch.Tensor | None = None
        self.hash_index = -1


@dataclass
class StepBuffer:
    step: int
    captures: list[Capture] = field(default_factory=list)
    stats: dict[torch.device, DeviceRows] = field(default_factory=dict)
    hashes: dict[torch.device, DeviceRows] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    root_op_counts: dict[str, int] = field(default_factory=dict)  # ops run outside any module
    has_tokens: bool = False
    # id(tensor) -> what was captured of it: a tensor captured twice unchanged (a layer's output
    # is the next layer's input) is measured and copied once
    seen: dict[int, Seen] = field(default_factory=dict)
    # accdump._C.StepCapture recording this step's tensors natively (module level, stats mode),
    # or None; records made in Python then take their order from it, so the two interleave
    native: Any = None
    native_tensors: dict[int, torch.Tensor] = field(default_factory=dict)  # order -> host copy

    def next_order(self) -> int:
        """The order of the next record made in Python."""
        return len(self.captures) if self.native is None else self.native.take_order()

    def forget(self, t: torch.Tensor) -> None:
        """Measures `t` again if captured again (it was written without a version bump)."""
        self.seen.pop(id(t), None)
        if self.native is not None:
            self.native.forget(t)

    def stats_rows(self, device: torch.device) -> DeviceRows:
        rows = self.stats.get(device)
        if rows is None:
            rows = self.stats[device] = DeviceRows(device, len(ops.STATS_FIELDS), torch.float64)
        return rows

    def hash_rows(self, device: torch.device) -> DeviceRows:
        rows = self.hashes.get(device)
        if rows is None:
            rows = self.hashes[device] = DeviceRows(device, 2, torch.int64)
        return rows


class NativeStep(NamedTuple):
    """What accdump._C.StepCapture recorded of a step (see its finish()), with the rows of each
    device on their way to the host."""

    # int64 [n, 11]: order, call, role, dtype id, device id, storage offset, contiguous, stats
    # index, and the name, arg and kind as indices into `strings`
    ints: torch.Tensor
    ndims: torch.Tensor
    shapes: torch.Tensor
    strides: torch.Tensor
    strings: list[str]
    devices: list[str]
    rows: list[list[torch.Tensor]]  # each device's statistics rows (host copies)
    tensors: dict[int, torch.Tensor]  # order -> host copy (the step's token ids)


def host_chunks(chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies device row chunks to host memory without blocking (pinned for CUDA)."""
    if not chunks or chunks[0].device.type == "cpu":
        return chunks
    out = []
    for c in chunks:
        h = torch.empty(c.shape, dtype=c.dtype, pin_memory=True)
        h.copy_(c, non_blocking=True)
        out.append(h)
    return out


@dataclass
class StepPayload:
    """A finished step handed to the writer thread: host buffers plus the events to wait on."""

    step: int
    captures: list[Capture]
    stats: dict[str, list[torch.Tensor]]
    hashes: dict[str, list[torch.Tensor]]
    events: list[Any]
    # a CUDA graph replay recorded as a step of its own: (its graph's ReplayTemplate, the host
    # copies of the template's tensor buffers); `captures` is then empty
    replay: tuple[Any, list[torch.Tensor]] | None = None
    native: NativeStep | None = None  # records made natively, interleaved with `captures` by order
