"""The recorder's native hot path (accdump._C.StepCapture, module level, stats mode): it finds
the tensors flatten.py finds under the same keys, measures each with the statistics op, reuses
only unchanged tensors, leaves everything else to Python, and its dumps are the Python path's."""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict

import pytest
import torch
from torch import nn

import accdump
from accdump import ops
from accdump.capture.flatten import find_tensors
from accdump.capture.step_buffer import CHUNK_ROWS, NATIVE_DTYPES

pytestmark = pytest.mark.skipif(not ops.native_available("cpu"), reason="accdump._C is not built")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and ops.native_available("cuda") else [])


def _capture() -> object:
    from accdump import _C

    return _C.StepCapture(NATIVE_DTYPES)


def _rows(finished: tuple) -> dict[str, torch.Tensor]:
    *_, devices, chunks = finished
    return {d: torch.cat(c).cpu() for d, c in zip(devices, chunks, strict=True)}


@dataclasses.dataclass
class Holder:
    t: torch.Tensor


class Ordered(OrderedDict):
    pass


@pytest.mark.parametrize("device", DEVICES)
def test_keys_order_and_statistics_match_python(device: str) -> None:
    g = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(4, 5, generator=g).to(device) for _ in range(3))
    value = (a, None, 7, "s", 2.5, {"k": b, "n": None, 3: [c, (a.t(), {"deep": b[1:]})], "": c}, [c])
    cap = _capture()
    made = cap.capture(value, "layer", 2, 1, "Kind")
    want = find_tensors(value)
    assert made == len(want)
    finished = cap.finish()
    ints, ndims, shapes, strides, strings, devices, _ = finished
    names = [strings[i] for i in ints[:, 8].tolist()]
    args = [strings[i] for i in ints[:, 9].tolist()]
    kinds = [strings[i] for i in ints[:, 10].tolist()]
    assert args == [k for k, _ in want]
    assert names == ["layer"] * made and kinds == ["Kind"] * made
    assert len(strings) == len(set(map(id, strings)))  # each string object once
    assert ints[:, 0].tolist() == list(range(made))  # order
    assert (ints[:, 1] == 2).all() and (ints[:, 2] == 1).all()
    assert ndims.tolist() == [t.dim() for _, t in want]
    assert shapes.tolist() == [s for _, t in want for s in t.shape]
    assert strides.tolist() == [s for _, t in want for s in t.stride()]
    assert ints[:, 5].tolist() == [t.storage_offset() for _, t in want]
    assert ints[:, 6].tolist() == [int(t.is_contiguous()) for _, t in want]
    assert devices == [str(a.device)]
    rows = _rows(finished)[str(a.device)]
    for (_, t), idx in zip(want, ints[:, 7].tolist(), strict=True):
        assert torch.equal(rows[idx], ops.tensor_stats_raw(t).cpu())
    # the same tensor captured twice is measured once; a view of it is a tensor of its own
    idx = dict(zip([id(t) for _, t in want], ints[:, 7].tolist(), strict=False))
    assert len(set(ints[:, 7].tolist())) == len({id(t) for _, t in want})
    assert idx[id(a)] != idx[id(want[3][1])]


class ModelOutputLike(OrderedDict):
    """Like HF ModelOutput: a dict subclass whose items() are its fields that are set."""

    def items(self):
        return [(k, v) for k, v in super().items() if v is not None]


def test_dict_subclasses_are_walked_through_their_items() -> None:
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(3, generator=g), torch.randn(2, 2, generator=g)
    out = ModelOutputLike(logits=a, past=None, hidden=(b, a), extra=Ordered(z=b))
    cap = _capture()
    assert cap.capture(out, "model", 0, 1, "Llama") == 4
    ints, *_, strings, _, _ = cap.finish()
    assert [strings[i] for i in ints[:, 9].tolist()] == [k for k, _ in find_tensors(out)]
    assert [strings[i] for i in ints[:, 9].tolist()] == ["logits", "hidden.0", "hidden.1", "extra.z"]


def test_top_level_tensor_and_positional_keys() -> None:
    cap = _capture()
    x = torch.randn(3)
    assert cap.capture(x, "m", 0, 1, "K") == 1
    args = tuple(torch.randn(2) if i % 7 == 0 else None for i in range(70))  # keys past the cached 64
    n = cap.capture(args, "m", 0, 0, "K")
    finished = cap.finish()
    keys = [finished[4][i] for i in finished[0][:, 9].tolist()]
    assert keys == ["0"] + [k for k, _ in find_tensors(args)]
    assert n == 10 and "63" in keys and "0" in keys[1:]


@pytest.mark.parametrize(
    "value",
    [
        (torch.randn(2), Holder(torch.randn(2))),  # a dataclass: Python walks its fields
        {"x": Ordered(a=Holder(torch.randn(2)))},  # a dataclass inside a dict subclass
        [torch.randn(2), type("L", (list,), {})([torch.randn(2)])],  # a list subclass
        (torch.randn(2), torch.randn(2, dtype=torch.complex64)),  # a dtype the statistics do not read
        (torch.randn(4, 4).to_sparse(),),
        (torch.randn(2).as_subclass(type("Sub", (torch.Tensor,), {})),),  # a tensor subclass
        (torch.empty(2, device="meta"),),
    ],
    ids=["dataclass", "dict-subclass", "list-subclass", "complex", "sparse", "subclass", "meta"],
)
def test_values_it_cannot_walk_are_left_whole_to_python(value: object) -> None:
    cap = _capture()
    assert cap.capture(value, "m", 0, 1, "K") == -1
    assert cap.records == 0 and cap.finish() is None


def test_capture_one_and_python_records_share_the_order() -> None:
    cap = _capture()
    assert cap.capture_one(torch.randn(2), "a", 0, 1, "x", "K") == 0
    assert cap.take_order() == 1  # a record the Python path makes
    assert cap.capture_one(torch.randn(2, dtype=torch.complex64), "b", 0, 1, "x", "K") == -1
    assert cap.capture((torch.randn(2),), "c", 0, 1, "K") == 1
    ints = cap.finish()[0]
    assert ints[:, 0].tolist() == [0, 2]
    assert cap.take_order() == 0  # finish() started a new step


@pytest.mark.parametrize("device", DEVICES)
def test_in_place_change_is_measured_again_and_unchanged_reuse(device: str) -> None:
    cap = _capture()
    g = torch.Generator().manual_seed(7)  # CPU random numbers, whatever state CUDA's generator is in
    x = torch.randn(100, generator=g).to(device)
    cap.capture(x, "a", 0, 1, "K")
    cap.capture(x, "b", 0, 0, "K")  # unchanged: the same row
    x.mul_(3)
    cap.capture(x, "b", 1, 0, "K")  # changed in place: a new row
    y = torch.randn(100, generator=g).to(device)
    cap.capture(y, "c", 0, 0, "K")
    cap.forget(y)  # written without a version bump (a collective): measured again
    cap.capture(y, "c", 1, 0, "K")
    finished = cap.finish()
    idx = finished[0][:, 7].tolist()
    assert idx[0] == idx[1] and idx[2] != idx[1] and idx[3] != idx[4]
    rows = _rows(finished)[str(x.device)]
    absmax = ops.STATS_FIELDS.index("absmax")
    assert rows[idx[2], absmax].item() == pytest.approx(3 * rows[idx[0], absmax].item(), rel=1e-6)


def test_inference_tensors_are_always_measured_again() -> None:
    with torch.inference_mode():
        x = torch.randn(10)
    cap = _capture()
    cap.capture(x, "a", 0, 1, "K")
    cap.capture(x, "b", 0, 0, "K")
    idx = cap.finish()[0][:, 7].tolist()
    assert idx[0] != idx[1]


def test_rows_grow_in_chunks() -> None:
    cap = _capture()
    xs = [torch.full((3,), float(i)) for i in range(CHUNK_ROWS + 5)]
    assert cap.capture(xs, "m", 0, 1, "K") == len(xs)
    finished = cap.finish()
    assert [len(c) for c in finished[-1][0]] == [CHUNK_ROWS, CHUNK_ROWS]
    rows = _rows(finished)["cpu"]
    for i, idx in enumerate(finished[0][:, 7].tolist()):
        assert rows[idx, ops.STATS_FIELDS.index("mean")].item() == float(i)


def test_every_dtype_it_claims() -> None:
    g = torch.Generator().manual_seed(5)
    cap = _capture()
    xs = []
    for dt in NATIVE_DTYPES:
        raw = torch.randint(0, 256, (33,), dtype=torch.uint8, generator=g)
        if dt.is_floating_point and dt.itemsize > 1:
            x = torch.randn(33, generator=g).to(dt)
        elif dt.itemsize == 1:
            x = raw.view(dt)
        else:
            x = torch.randint(-50, 50, (33,), generator=g).to(dt)
        xs.append(x)
    assert cap.capture(xs, "m", 0, 1, "K") == len(xs)
    finished = cap.finish()
    rows = _rows(finished)["cpu"]
    for x, (dt_id, idx) in zip(xs, finished[0][:, [3, 7]].tolist(), strict=True):
        assert NATIVE_DTYPES[dt_id] == x.dtype
        torch.testing.assert_close(rows[idx], ops.tensor_stats_raw(x), equal_nan=True, rtol=0, atol=0)


def test_bad_arguments() -> None:
    from accdump import _C

    cap = _capture()
    with pytest.raises(TypeError, match="takes 5 arguments"):
        cap.capture(torch.randn(2), "m", 0)
    with pytest.raises(TypeError):
        cap.capture(torch.randn(2), "m", "zero", 1, "K")
    with pytest.raises(TypeError, match="not a torch.dtype"):
        _C.StepCapture([torch.float32, "float16"])


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x, *, cache=None, pair=None):
        y = self.norm(self.proj(x))
        accdump.probe("inside", {"y": y, "n": [x, 1]})
        return y, (pair[0] * y, None), Holder(y + 1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.blocks = nn.ModuleList(Block() for _ in range(3))

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x, _, _ = b(x, cache=object(), pair=(x.transpose(0, 1).transpose(0, 1), x))
            x.add_(0.5)  # an in-place change between captures
        return {"logits": x}


@pytest.mark.parametrize("device", DEVICES)
def test_dumps_match_the_python_path(device: str, tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    net = Net().to(device)
    ids = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(1)).to(device)
    outputs = {}
    for how in ("native", "python"):
        monkeypatch.setenv("ACCDUMP_CAPTURE", how)
        with accdump.record(net, tmp_path / how) as rec, torch.no_grad():
            assert (rec._native is not None) == (how == "native")
            outputs[how] = [net(ids)["logits"] for _ in range(3)]
    for a, b in zip(outputs["native"], outputs["python"], strict=True):
        assert torch.equal(a, b)
    native = list(accdump.load(tmp_path / "native").records())
    python = list(accdump.load(tmp_path / "python").records())
    assert len(native) == len(python) > 3 * 20
    d_native, d_python = accdump.load(tmp_path / "native"), accdump.load(tmp_path / "python")
    for a, b in zip(native, python, strict=True):
        # where a step's bytes lie depends on how steps were batched into segments
        assert dataclasses.replace(a, segment=None, heap_offset=0) == dataclasses.replace(
            b, segment=None, heap_offset=0
        )
        if a.heap_nbytes:
            assert torch.equal(d_native.tensor(a), d_python.tensor(b))
    assert {r.role for r in native} >= {accdump.store.Role.TOKENS, accdump.store.Role.PROBE}


def test_python_path_is_kept_for_other_modes_and_levels(tmp_path) -> None:
    for kwargs in ({"mode": "tensor"}, {"mode": "hash"}, {"level": "op"}, {"level": "all"}):
        with accdump.record(nn.Linear(2, 2), tmp_path / str(len(os.listdir(tmp_path))), **kwargs) as rec:
            assert rec._native is None
