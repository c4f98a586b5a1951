"""Dumps written by the recorder come back exactly: every dtype and layout bit for bit, statistics,
names, and a file layout that plain h5py can read."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

import accdump
from accdump import ops
from accdump.store import FORMAT_NAME, FORMAT_VERSION, Role

SEED = 1234

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
]
_SIGNED_BY_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits in logical (row-major) order, as signed integers of the same width."""
    return t.contiguous().view(_SIGNED_BY_SIZE[t.element_size()])


def _random_bits(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Arbitrary bit patterns (NaN payloads, subnormals, -0.0 ...); bools stay 0/1."""
    raw = torch.randint(0, 256, (math.prod(shape) * dtype.itemsize,), generator=gen, dtype=torch.uint8)
    if dtype == torch.bool:
        raw &= 1
    return raw.view(dtype).reshape(shape)


def _random_values(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Realistic values, with NaN, +-Inf and -0.0 in floating tensors."""
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if not dtype.is_floating_point:
        lo = 0 if dtype == torch.uint8 else -100
        return torch.randint(lo, 100, shape, generator=gen).to(dtype)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    flat = x.view(-1)
    flat[0], flat[7], flat[13], flat[21] = float("nan"), float("inf"), float("-inf"), -0.0
    return x.to(dtype)


def _layouts(base: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of a (6, 10) tensor covering strides, storage offsets, 0-d and empty tensors."""
    assert base.shape == (6, 10)
    return {
        "contiguous": base,
        "transposed": base.t(),
        "sliced": base[1:5, 2::3],  # storage_offset 12, strides (10, 3)
        "expanded": base[2, :4].expand(3, 4),  # stride 0
        "permuted3d": base.reshape(2, 3, 10).permute(2, 0, 1),
        "scalar": base.reshape(-1)[7],  # 0-d with a storage offset
        "empty_view": base[:, :0],
        "empty": torch.empty(0, 4, dtype=base.dtype, device=base.device),
    }


def _same_stat(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def _assert_stats_equal(got: ops.TensorStats, want: ops.TensorStats, what: str) -> None:
    for field in ops.STATS_FIELDS:
        g, w = getattr(got, field), getattr(want, field)
        assert _same_stat(float(g), float(w)), f"{what}: {field} is {g}, tensor_stats says {w}"


def _record_probes(path, tensors: dict[str, torch.Tensor], **kwargs) -> accdump.Dump:
    with accdump.record(None, path, mode="tensor", **kwargs) as rec:
        for name, t in tensors.items():
            accdump.probe(name, t)
    assert rec.error is None
    return accdump.load(path)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_every_dtype_and_layout_round_trips_bit_exactly(tmp_path, dtype):
    gen = torch.Generator().manual_seed(SEED)
    tensors = {f"bits/{k}": v for k, v in _layouts(_random_bits(dtype, (6, 10), gen)).items()}
    tensors |= {f"values/{k}": v for k, v in _layouts(_random_values(dtype, (6, 10), gen)).items()}
    dump = _record_probes(tmp_path / "d", tensors)

    recs = list(dump.records())
    assert [r.name for r in recs] == list(tensors)
    assert [r.order for r in recs] == list(range(len(tensors)))
    for r in recs:
        t = tensors[r.name]
        assert (r.step, r.call, r.role, r.arg, r.kind) == (0, 0, Role.PROBE, "0", "probe"), r.name
        assert r.dtype == _dtype_id(dtype)
        assert r.device == "cpu"
        # the layout of the tensor as the program had it ...
        assert r.shape == tuple(t.shape), r.name
        assert r.strides == tuple(t.stride()), r.name
        assert r.storage_offset == t.storage_offset(), r.name
        assert r.contiguous == t.is_contiguous(), r.name
        assert r.has_tensor and r.heap_nbytes == t.numel() * t.element_size()
        # ... and its logical values, stored contiguously, bit for bit
        stored = dump.tensor(r)
        assert stored.dtype == dtype and tuple(stored.shape) == tuple(t.shape), r.name
        assert stored.is_contiguous()
        assert torch.equal(_bits(stored), _bits(t)), f"{r.name}: stored bits differ"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_cuda_tensors_round_trip_bit_exactly(tmp_path, dtype):
    gen = torch.Generator().manual_seed(SEED)
    base = _random_bits(dtype, (6, 10), gen).cuda()
    tensors = _layouts(base)
    originals = {k: v.cpu() for k, v in tensors.items()}
    with accdump.record(None, tmp_path / "d", mode="tensor") as rec:
        for name, t in tensors.items():
            accdump.probe(name, t)
        base.zero_()  # queued right after the captures: the copies must hold the values before it
    assert rec.error is None
    dump = accdump.load(tmp_path / "d")
    recs = list(dump.records())
    assert [r.name for r in recs] == list(tensors)
    for r in recs:
        t = originals[r.name]
        assert r.device.startswith("cuda")
        assert (r.shape, r.strides, r.storage_offset) == (
            tuple(t.shape),
            tensors[r.name].stride(),
            tensors[r.name].storage_offset(),
        )
        stored = dump.tensor(r)
        assert stored.device.type == "cpu" and stored.dtype == dtype
        assert torch.equal(_bits(stored), _bits(t)), r.name
        assert r.stats.count == t.numel()


def test_layout_metadata_is_not_trivially_contiguous():
    # guards the test above: the layouts must really exercise strides, offsets and 0-d/empty shapes
    ls = _layouts(torch.zeros(6, 10))
    assert not ls["transposed"].is_contiguous() and ls["sliced"].storage_offset() == 12
    assert ls["expanded"].stride()[0] == 0 and ls["scalar"].dim() == 0 and ls["scalar"].storage_offset() == 7
    assert ls["empty_view"].numel() == 0 and ls["empty"].numel() == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_statistics_columns_match_tensor_stats(tmp_path, dtype):
    gen = torch.Generator().manual_seed(SEED + 1)
    tensors = _layouts(_random_values(dtype, (6, 10), gen))
    dump = _record_probes(tmp_path / "d", tensors)
    recs = {r.name: r for r in dump.records()}
    assert set(recs) == set(tensors)
    for name, t in tensors.items():
        r = recs[name]
        _assert_stats_equal(r.stats, ops.tensor_stats(t), f"{name} (as recorded)")
        _assert_stats_equal(r.stats, ops.tensor_stats(dump.tensor(r)), f"{name} (stored copy)")
        assert r.stats.count == t.numel()
    if dtype.is_floating_point:
        # the special values planted in the base tensor are counted, not summed
        s = recs["contiguous"].stats
        # float8_e4m3fn has no infinities: torch versions turn them into NaN or saturate them
        t = tensors["contiguous"].float()
        want = (int(t.isnan().sum()), int(t.isposinf().sum()), int(t.isneginf().sum()))
        assert want in ((1, 1, 1), (1, 0, 0), (3, 0, 0))
        assert (s.nan, s.posinf, s.neginf) == want
        assert math.isfinite(s.sum) and math.isfinite(s.max)


def test_statistics_of_special_tensors(tmp_path):
    tensors = {
        "scalar": torch.tensor(-2.5),
        "empty": torch.empty(0, 3),
        "ints": torch.tensor([[3, -7], [0, 12]], dtype=torch.int32),
        "bools": torch.tensor([True, False, True]),
    }
    recs = {r.name: r for r in _record_probes(tmp_path / "d", tensors).records()}
    s = recs["scalar"].stats
    assert (s.count, s.min, s.max, s.sum, s.absmax, s.std) == (1, -2.5, -2.5, -2.5, 2.5, 0.0)
    assert recs["empty"].stats.count == 0 and recs["empty"].stats.sum == 0.0
    s = recs["ints"].stats
    assert (s.count, s.zeros, s.min, s.max, s.sum, s.absmax) == (4, 1, -7.0, 12.0, 8.0, 12.0)
    s = recs["bools"].stats
    assert (s.count, s.zeros, s.sum, s.max) == (3, 1, 2.0, 1.0)


NAMES = [
    "records",
    "heap",
    "/",
    ".",
    "..",
    "a/b/../c",
    "/leading/slash",
    "trailing/",
    "model.layers.0.self_attn/softmax.0",
    "ü日本語🙂",
    "nul\x00inside",
    " lead and trail ",
    "two  spaces",
    'say "hi"',
    "it's",
    "tab\there\nnew line",
    "%s{0}[*?]\\",
    "#@!$&;|<>~`",
    "x" * 5000,
    "",
]


def test_names_round_trip_exactly(tmp_path):
    gen = torch.Generator().manual_seed(SEED)
    values = {name: torch.randn(2, generator=gen) for name in NAMES}
    with accdump.record(None, tmp_path / "d", mode="tensor") as rec:
        for name in NAMES:
            accdump.probe(name, values[name])
        accdump.probe("keys", {"a/b": torch.ones(1), "ü k": torch.zeros(1), 'q"uote': torch.full((1,), 2.0)})
    assert rec.error is None
    dump = accdump.load(tmp_path / "d")
    recs = list(dump.records())
    assert [r.name for r in recs] == [*NAMES, "keys", "keys", "keys"]
    assert [r.arg for r in recs[-3:]] == ["a/b", "ü k", 'q"uote']
    for r in recs[: len(NAMES)]:
        assert torch.equal(dump.tensor(r), values[r.name]), repr(r.name[:40])
    # names are data, never HDF5 paths: the file holds exactly the two datasets
    (seg,) = (tmp_path / "d" / "rank00000").glob("seg*.h5")
    with h5py.File(seg, "r") as f:
        assert sorted(f.keys()) == ["heap", "records"]
    # and the name glob of the reader matches them literally where they hold no glob characters
    assert [r.name for r in dump.records(name="ü日本語🙂")] == ["ü日本語🙂"]
    assert [r.name for r in dump.records(name="/")] == ["/"]


@pytest.mark.parametrize("mode", ["tensor", "stats"])  # Python records; native ones (label columns)
def test_names_with_trailing_nul_round_trip(tmp_path, mode):
    with accdump.record(None, tmp_path / "d", mode=mode) as rec:
        accdump.probe("end\x00", torch.ones(2))
        accdump.probe("\x00", torch.ones(2))
        accdump.probe("keys", {"k\x00": torch.ones(1)})
    assert rec.error is None
    recs = list(accdump.load(tmp_path / "d").records())
    assert [(r.name, r.arg) for r in recs] == [("end\x00", "0"), ("\x00", "0"), ("keys", "k\x00")]


def test_segment_is_readable_with_plain_h5py(tmp_path):
    f32 = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    bf16 = (torch.arange(6, dtype=torch.float32) - 2.5).to(torch.bfloat16)
    ids = torch.tensor([[5, 7, 11]])
    with accdump.record(None, tmp_path / "d", mode="tensor"):
        accdump.probe("f32", f32.t())  # non-contiguous: stored in logical order
        accdump.probe("bf16", bf16)
        accdump.probe("ids", ids)
    segs = sorted((tmp_path / "d" / "rank00000").glob("seg*.h5"))
    assert [p.name for p in segs] == ["seg00000000.h5"]

    def text(v):
        return v.decode() if isinstance(v, bytes) else str(v)

    with h5py.File(segs[0], "r") as f:
        assert text(f.attrs["format"]) == FORMAT_NAME == "accdump"
        assert int(f.attrs["format_version"]) == FORMAT_VERSION
        assert text(f.attrs["mode"]) == "tensor"
        rows = f["records"][...]
        heap = f["heap"][...]
    assert heap.dtype == np.uint8 and heap.ndim == 1
    assert {
        "step",
        "order",
        "name",
        "call",
        "role",
        "arg",
        "dtype",
        "shape",
        "strides",
        "storage_offset",
        "heap_offset",
        "heap_nbytes",
        *ops.STATS_FIELDS,
    } <= set(rows.dtype.names)
    by_name = {text(r["name"]): r for r in rows}
    assert list(by_name) == ["f32", "bf16", "ids"]

    def raw(r) -> bytes:
        off, n = int(r["heap_offset"]), int(r["heap_nbytes"])
        return heap[off : off + n].tobytes()

    def shape(r) -> tuple[int, ...]:  # shapes are padded to the segment's largest ndim (docs/format.md)
        return tuple(int(v) for v in r["shape"][: int(r["ndim"])])

    r = by_name["f32"]
    assert text(r["dtype"]) == "float32" and shape(r) == (4, 3)
    assert tuple(int(v) for v in r["strides"][: int(r["ndim"])]) == (1, 4)
    np.testing.assert_array_equal(np.frombuffer(raw(r), dtype="<f4").reshape(4, 3), f32.t().numpy())
    assert r["max"] == float(f32.max()) and r["count"] == 12 and int(r["role"]) == int(Role.PROBE)
    r = by_name["bf16"]  # numpy has no bfloat16: stored as its raw 16-bit words
    assert text(r["dtype"]) == "bfloat16" and shape(r) == (6,)
    np.testing.assert_array_equal(
        np.frombuffer(raw(r), dtype="<u2"), bf16.view(torch.int16).numpy().view(np.uint16)
    )
    r = by_name["ids"]
    np.testing.assert_array_equal(np.frombuffer(raw(r), dtype="<i8").reshape(shape(r)), ids.numpy())
    # the recipe of docs/format.md: raw bytes -> torch dtype named by the dtype column
    for name, want in (("f32", f32.t()), ("bf16", bf16), ("ids", ids)):
        r = by_name[name]
        off, n = int(r["heap_offset"]), int(r["heap_nbytes"])
        t = (
            torch.from_numpy(heap[off : off + n].copy())
            .view(getattr(torch, text(r["dtype"])))
            .reshape(shape(r))
        )
        assert torch.equal(t, want), name


def test_run_metadata_is_stored(tmp_path):
    with accdump.record(None, tmp_path / "d", mode="hash", level="op", metadata={"who": "test", "n": 3}):
        accdump.probe("x", torch.ones(3))
    meta = accdump.load(tmp_path / "d").meta()
    assert meta["format"] == FORMAT_NAME and int(meta["format_version"]) == FORMAT_VERSION
    assert (meta["mode"], meta["level"]) == ("hash", "op")
    assert int(meta["world_size"]) == 1 and int(meta["rank"]) == 0
    assert meta["user_metadata"] == {"who": "test", "n": 3}
    assert isinstance(meta["command_line"], list)
    assert meta["torch_version"] == str(torch.__version__)


def test_stats_mode_stores_no_tensor(tmp_path):
    t = torch.arange(10, dtype=torch.float32)
    with accdump.record(None, tmp_path / "d", mode="stats"):
        accdump.probe("x", t)
    dump = accdump.load(tmp_path / "d")
    (r,) = dump.records()
    assert not r.has_tensor and r.hash == ""
    assert (r.stats.count, r.stats.sum, r.stats.max) == (10, 45.0, 9.0)
    with pytest.raises(accdump.DumpFormatError, match="without its tensor"):
        dump.tensor(r)
