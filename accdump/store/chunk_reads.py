"""Tensor bytes read straight from a segment's heap chunks, checksums verified by accdump.

libhdf5 reads under h5py's one process-wide lock and verifies each chunk's Fletcher-32 at about
1.5 GB/s, so threads reading a dump take turns and a compare cannot go faster than that. A heap
chunk is plain bytes followed by its checksum (accdump writes it so: 1-D uint8, the fletcher32
filter alone), so its location, read once per segment through h5py, is all that is needed:
the bytes are then read with pread (no lock, the GIL released) straight into the caller's buffer
and verified with the native fletcher32, bit for bit libhdf5's. Anything else (another layout,
no native extension, a checksum that does not match) goes through libhdf5 as before, which
then reports a damaged chunk in its own words.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from h5py import h5d, h5z

_CHECKSUM = 4  # bytes after each chunk's data


@dataclass(frozen=True)
class HeapChunks:
    """Where each chunk of one segment's heap lies in its file."""

    path: Path
    chunk: int  # bytes of data per chunk
    size: int  # bytes in the heap
    offsets: np.ndarray  # file offset of chunk i

    @classmethod
    def locate(cls, path: Path, heap: Any) -> HeapChunks | None:
        """The chunk table of `heap` (an h5py dataset of `path`), or None if its layout is not
        accdump's (read through libhdf5 then)."""
        try:
            plist = heap.id.get_create_plist()
            if plist.get_layout() != h5d.CHUNKED or plist.get_nfilters() != 1:
                return None
            if plist.get_filter(0)[0] != h5z.FILTER_FLETCHER32:
                return None
            (chunk,) = plist.get_chunk()
            size = int(heap.shape[0])
            count = -(-size // chunk)
            if heap.id.get_num_chunks() != count:
                return None  # unallocated chunks: libhdf5 fills them
            offsets = np.empty(count, dtype=np.int64)
            for i in range(count):
                info = heap.id.get_chunk_info(i)
                if (
                    info.filter_mask != 0
                    or info.size != chunk + _CHECKSUM
                    or info.chunk_offset[0] != i * chunk
                ):
                    return None
                offsets[i] = info.byte_offset
        except (AttributeError, ValueError, RuntimeError, OSError):
            return None  # an h5py or HDF5 without chunk queries
        return cls(path, int(chunk), size, offsets)

    def read_into(self, begin: int, out: np.ndarray, checksum: Any) -> bool:
        """Reads heap bytes [begin, begin + out.size) into `out`, verifying each chunk with
        `checksum` (bytes -> int); False if a chunk does not verify or is short (the caller then
        reads through libhdf5, which says what is wrong)."""
        if out.size == 0:
            return True
        fd = os.open(self.path, os.O_RDONLY)
        try:
            first, last = begin // self.chunk, (begin + out.size - 1) // self.chunk
            # one request for the whole span (the chunks lie in order): the disk gets it at once
            # instead of a chunk at a time
            span = int(self.offsets[last]) + self.chunk + _CHECKSUM - int(self.offsets[first])
            if span > 0 and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, int(self.offsets[first]), span, os.POSIX_FADV_WILLNEED)
            scratch: np.ndarray | None = None
            tail = bytearray(_CHECKSUM)
            for c in range(first, last + 1):
                start = c * self.chunk
                lo, hi = max(begin, start), min(begin + out.size, start + self.chunk)
                if lo == start and hi == start + self.chunk:  # whole chunk: read in place
                    data = out[lo - begin : hi - begin]
                else:
                    if scratch is None:
                        scratch = np.empty(self.chunk, dtype=np.uint8)
                    data = scratch
                n = os.preadv(fd, [data.data, tail], int(self.offsets[c]))
                stored = int.from_bytes(tail, "little")
                # a checksum of 0 (all-zero bytes) is also what a zeroed-out stretch of the file
                # looks like: libhdf5, which reads the chunk's index entry too, decides those
                if n != self.chunk + _CHECKSUM or stored == 0 or checksum(data) != stored:
                    return False
                if data is scratch:
                    out[lo - begin : hi - begin] = scratch[lo - start : hi - start]
            return True
        finally:
            os.close(fd)
