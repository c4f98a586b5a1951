"""Known ways production code mis-reads a quantized weight (shared/quant_formats.md §7), each
as a re-decoding of the same bytes. verify tries them when a layer fails: the one whose
reference reproduces the production output names the bug."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from accdump.quant.formats import BlockQuantized, dense
from accdump.quant.layouts import swizzle_128x4, unswizzle_128x4
from accdump.reference.quant import decode, format_of


@dataclass(frozen=True)
class Hypothesis:
    name: str
    description: str
    apply: Callable[[BlockQuantized], BlockQuantized | None]  # None: does not apply to this weight


def _scale_values(w: BlockQuantized) -> torch.Tensor:
    assert w.scale is not None
    return decode(w.scale, format_of(w.scale, w.scale_format, "scale", "verify")).to(torch.float32)


def _with_scale(w: BlockQuantized, s: torch.Tensor) -> BlockQuantized:
    return w.replace(scale=s.to(torch.float32).contiguous(), scale_format="auto")


def _transposed(w: BlockQuantized) -> BlockQuantized | None:
    if w.scale is None or min(w.scale.shape) < 2:
        return None
    s = _scale_values(w)
    return _with_scale(w, s.T.contiguous().view(s.shape))


def _read_column_major(w: BlockQuantized) -> BlockQuantized | None:
    """The row-major scale grid indexed as if column-major (the inverse of _transposed's
    permutation; the same one on a square grid, where _transposed names it)."""
    if w.scale is None or min(w.scale.shape) < 2 or w.scale.shape[0] == w.scale.shape[1]:
        return None
    s = _scale_values(w)
    rows, cols = s.shape
    return _with_scale(w, s.reshape(-1).view(cols, rows).T)


def _inverted(w: BlockQuantized) -> BlockQuantized | None:
    return None if w.scale is None else _with_scale(w, 1.0 / _scale_values(w))


def _tiled(w: BlockQuantized) -> BlockQuantized | None:
    if w.scale is None or w.scale.numel() < 2:
        return None
    rows, cols = w.shape
    s = _scale_values(w)
    reps = (-(-rows // s.shape[0]), -(-cols // s.shape[1]))
    values = w.replace(scale=None).dequantize() * s.tile(reps)[:rows, :cols].to(w.q.device) * w.global_scale
    return dense(values)


def _block_size(new_cols: int, keep_row_stride: bool) -> Callable[[BlockQuantized], BlockQuantized | None]:
    def apply(w: BlockQuantized) -> BlockQuantized | None:
        if w.scale is None or w.block[0] != 1 or w.block[1] == new_cols:
            return None
        rows, cols = w.shape
        need = -(-cols // new_cols)
        s = _scale_values(w)
        if keep_row_stride:  # index k // new within each row of the stored scales
            if need > s.shape[1]:
                return None
            picked = s[:, :need]
        else:  # the scale buffer re-read with rows of `need` scales
            flat = s.reshape(-1)
            if rows * need > flat.numel():
                return None
            picked = flat[: rows * need].view(rows, need)
        return w.replace(scale=picked.contiguous(), scale_format="auto", block=(1, new_cols))

    return apply


def _element(new: str, old: tuple[str, ...]) -> Callable[[BlockQuantized], BlockQuantized | None]:
    return lambda w: w.replace(element=new) if w.element in old else None


def _nibbles_swapped(w: BlockQuantized) -> BlockQuantized | None:
    if w.element != "e2m1":
        return None
    return w.replace(q=(w.q << 4) | (w.q >> 4))


def _global(fn: Callable[[float], float]) -> Callable[[BlockQuantized], BlockQuantized | None]:
    return lambda w: None if w.global_scale == 1.0 else w.replace(global_scale=fn(w.global_scale))


def _swizzled_read_linear(w: BlockQuantized) -> BlockQuantized | None:
    if w.scale is None or w.block[0] != 1 or w.scale.shape[0] < 2 or w.scale.shape[1] < 2:
        return None
    s = _scale_values(w)
    rows, cols = s.shape
    buf = swizzle_128x4(s)
    return _with_scale(w, buf.view(-1, -(-cols // 4) * 4)[:rows, :cols])


def _linear_read_swizzled(w: BlockQuantized) -> BlockQuantized | None:
    if w.scale is None or w.block[0] != 1 or w.scale.shape[0] < 2 or w.scale.shape[1] < 2:
        return None
    s = _scale_values(w)
    rows, cols = s.shape
    need = -(-rows // 128) * 128 * -(-cols // 4) * 4
    flat = torch.cat([s.reshape(-1), s.new_zeros(max(0, need - s.numel()))])
    return _with_scale(w, unswizzle_128x4(flat, rows, cols))


def _e8m0_off_by_one(factor: float) -> Callable[[BlockQuantized], BlockQuantized | None]:
    def apply(w: BlockQuantized) -> BlockQuantized | None:
        if w.scale is None or format_of(w.scale, w.scale_format, "scale", "verify") != "e8m0":
            return None
        return _with_scale(w, _scale_values(w) * factor)

    return apply


def _scale_format(new: str, old: tuple[str, ...]) -> Callable[[BlockQuantized], BlockQuantized | None]:
    def apply(w: BlockQuantized) -> BlockQuantized | None:
        if w.scale is None or format_of(w.scale, w.scale_format, "scale", "verify") not in old:
            return None
        return w.replace(scale=w.scale.contiguous().view(torch.uint8), scale_format=new)

    return apply


def _weight_transposed(w: BlockQuantized) -> BlockQuantized | None:
    rows, cols = w.shape
    return dense(w.dequantize().T.contiguous()) if rows == cols else None


HYPOTHESES: list[Hypothesis] = [
    Hypothesis("scales-transposed", "block scales read with transposed layout", _transposed),
    Hypothesis(
        "scales-column-major", "block scales read column-major (transposed indexing)", _read_column_major
    ),
    Hypothesis(
        "scales-inverted",
        "block scales divided instead of multiplied (quant vs dequant direction)",
        _inverted,
    ),
    Hypothesis("scales-tiled", "scales expanded with .repeat/tile instead of repeat_interleave", _tiled),
    Hypothesis("block-16", "block size 16 assumed", _block_size(16, True)),
    Hypothesis("block-32", "block size 32 assumed", _block_size(32, True)),
    Hypothesis("block-128", "block size 128 assumed", _block_size(128, True)),
    Hypothesis("block-16-rows", "block size 16 assumed, scale rows re-read", _block_size(16, False)),
    Hypothesis("block-32-rows", "block size 32 assumed, scale rows re-read", _block_size(32, False)),
    Hypothesis(
        "bytes-converted",
        "FP8 bytes converted numerically (.to() instead of .view())",
        _element("u8", ("e4m3fn", "e4m3fnuz", "e5m2", "e5m2fnuz")),
    ),
    Hypothesis("read-as-e4m3fnuz", "e4m3fn bytes read as e4m3fnuz", _element("e4m3fnuz", ("e4m3fn",))),
    Hypothesis("read-as-e4m3fn", "e4m3fnuz bytes read as e4m3fn", _element("e4m3fn", ("e4m3fnuz",))),
    Hypothesis("read-as-e5m2", "E4M3 bytes decoded with the E5M2 table", _element("e5m2", ("e4m3fn",))),
    Hypothesis(
        "nibbles-swapped", "FP4 nibble order swapped (element 0 in the high nibble)", _nibbles_swapped
    ),
    Hypothesis("global-missing", "global (per-tensor) scale not applied", _global(lambda g: 1.0)),
    Hypothesis(
        "global-inverted", "global scale inverted (quant vs dequant convention)", _global(lambda g: 1.0 / g)
    ),
    Hypothesis("swizzled-read-linear", "128x4-swizzled scales read as linear", _swizzled_read_linear),
    Hypothesis("linear-read-swizzled", "linear scales un-swizzled by the kernel", _linear_read_swizzled),
    Hypothesis("e8m0-bias-low", "E8M0 exponent bias off by one (2^(s-128))", _e8m0_off_by_one(0.5)),
    Hypothesis("e8m0-bias-high", "E8M0 exponent bias off by one (2^(s-126))", _e8m0_off_by_one(2.0)),
    Hypothesis("scales-as-e8m0", "E4M3 block scales decoded as E8M0", _scale_format("e8m0", ("e4m3fn",))),
    Hypothesis(
        "scale-bytes-as-numbers",
        "block-scale bytes used as uint8 numbers",
        _scale_format("u8", ("e4m3fn", "e8m0")),
    ),
    Hypothesis("weight-transposed", "weight used transposed (square matrix)", _weight_transposed),
]
