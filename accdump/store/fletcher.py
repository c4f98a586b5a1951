"""HDF5's Fletcher-32 checksum, bit for bit (libhdf5's H5_checksum_fletcher32), computed with
numpy, so that a chunk can be written directly (`write_direct_chunk`) with the checksum the
fletcher32 filter would have appended: libhdf5 then verifies it on every read as usual.

libhdf5 adds the data as big-endian 16-bit words (a last odd byte as its high half), folds both sums
with (s & 0xffff) + (s >> 16) after every 360 words, and keeps sum2 in 32 bits. A fold keeps a sum's
value modulo 65535 and never turns a positive sum into 0, so each final 16-bit sum is 0 for
all-zero data and otherwise the one value in [1, 65535] congruent to the unreduced sum, unless
sum2 wrapped around 2^32 inside a block of 360 words (only possible for blocks of nearly all 0xffff
words): those inputs take libhdf5's loop as it is written.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 360  # words between reductions
_MOD = 65535
_FOLDED_MAX = 131071  # a folded sum stays below 2^17


def _words(data: bytes) -> np.ndarray:
    b = memoryview(data).cast("B")
    w = np.frombuffer(b, dtype=">u2", count=len(b) // 2).astype(np.int64)
    if len(b) % 2:  # an odd last byte is the high half of a last word
        w = np.append(w, np.int64(b[-1]) << 8)
    return w


def _fold(s: int) -> int:
    return (s & 0xFFFF) + (s >> 16)


def _loop(w: np.ndarray, odd: bool) -> int:
    """libhdf5's loop, block by block (sum2 kept in 32 bits)."""
    words = w[:-1] if odd else w
    sum1 = sum2 = 0
    for start in range(0, words.size, _BLOCK):
        for x in words[start : start + _BLOCK].tolist():
            sum1 += x
            sum2 = (sum2 + sum1) & 0xFFFFFFFF
        sum1, sum2 = _fold(sum1), _fold(sum2)
    if odd:
        sum1 += int(w[-1])
        sum2 = (sum2 + sum1) & 0xFFFFFFFF
        sum1, sum2 = _fold(sum1), _fold(sum2)
    return (_fold(sum2) << 16) | _fold(sum1)


def fletcher32(data: bytes) -> int:
    """The Fletcher-32 checksum libhdf5's fletcher32 filter computes for these bytes."""
    w = _words(data)
    total1 = int(w.sum())
    if total1 == 0:
        return 0
    n = w.size
    odd = len(memoryview(data).cast("B")) % 2 == 1
    iw = np.arange(n, dtype=np.int64) * w  # < 2^48 each: the sums below stay exact in int64
    # sum2 before a block's fold is below sum2 + 360 * sum1 + the block's weighted sum
    # sum_j (len - j) w_j, both folded sums being below 2^17: no wrap while that is below 2^32
    even = n - 1 if odd else n
    if even:
        starts = np.arange(0, even, _BLOCK)
        lens = np.minimum(_BLOCK, even - starts)
        sums = np.add.reduceat(w[:even], starts)
        weighted = lens * sums - (np.add.reduceat(iw[:even], starts) - starts * sums)
        if int(weighted.max()) >= 2**32 - (_BLOCK + 1) * _FOLDED_MAX:
            return _loop(w, odd)
    total2 = n * total1 - int(iw.sum())  # word i enters sum2 (n - i) times
    sum1 = 1 + (total1 - 1) % _MOD
    sum2 = 1 + (total2 - 1) % _MOD
    return (sum2 << 16) | sum1
