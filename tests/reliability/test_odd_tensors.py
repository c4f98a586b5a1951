"""Odd tensors through record -> show -> compare: NaN / Inf everywhere, empty, 0-d, integer, bool
are recorded and compared as they are; complex and meta-device tensors (huge shapes included,
never allocated) are skipped, counted and said, never recorded as something else."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import accdump
from accdump.store import Role

NAN, INF = float("nan"), float("inf")
HUGE = (2**40, 2**20)  # 2^60 elements: exists only as metadata on the meta device


class Odd(nn.Module):
    """Returns what its name says, computed from its input (so a target can differ)."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def forward(self, x: torch.Tensor):
        w = self.what
        if w == "nan_inf":
            return x / 0  # 0/0 -> NaN, +/0 -> Inf, -/0 -> -Inf
        if w == "all_nan":
            return torch.full_like(x, NAN)
        if w == "all_inf":
            return torch.where(x >= 0, INF, -INF)
        if w == "empty":
            return x[:, :0]
        if w == "scalar":
            return x.sum()
        if w == "argmax":
            return x.argmax(-1)
        if w == "mask":
            return x > 0
        if w == "complex":
            return torch.fft.fft(x)
        if w == "meta":
            return torch.empty(HUGE, device="meta")
        if w == "broadcast":  # 16M logical elements over one stored value (stride 0)
            return x.reshape(-1)[:1].expand(4096, 4096)
        raise AssertionError(w)


KINDS = ["nan_inf", "all_nan", "all_inf", "empty", "scalar", "argmax", "mask", "complex", "meta", "broadcast"]


class OddModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.parts = nn.ModuleDict({k: Odd(k) for k in KINDS})

    def forward(self, x: torch.Tensor):
        return [self.parts[k](x) for k in KINDS]


def _input(target: bool = False) -> torch.Tensor:
    x = torch.tensor([[0.0, 1.5, -2.0, 3.0], [-1.0, 0.0, 2.5, -0.5]])
    if target:  # a NaN where the golden has a number, in the one record that must say so
        x = x.clone()
        x[0, 1] = NAN
    return x


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    out = {}
    for mode in ("stats", "tensor"):
        for side in ("golden", "same", "target"):
            path = root / f"{side}_{mode}"
            model = OddModel()
            x = _input(target=side == "target")
            with torch.no_grad(), accdump.record(model, path, mode=mode) as rec:
                model(x)
                # probes of the same kinds, straight from the user
                accdump.probe("probe/nan_everywhere", torch.full((3, 3), NAN, dtype=torch.bfloat16))
                accdump.probe("probe/zero_d_int", torch.tensor(7))
                accdump.probe("probe/complex", torch.ones(2, dtype=torch.complex128))
                accdump.probe("probe/meta", torch.empty(HUGE, dtype=torch.bfloat16, device="meta"))
            assert rec.error is None
            out[side, mode] = (path, dict(rec.skipped))
    return out


@pytest.mark.parametrize("mode", ["stats", "tensor"])
def test_unrecordable_tensors_are_skipped_counted_and_said(dumps, mode, tmp_path, capfd):
    path, skipped = dumps["golden", mode]
    # counted per capture: the complex and meta outputs are also items of the root's output
    assert skipped == {
        "cpu complex64 strided": 2,
        "cpu complex128 strided": 1,
        "meta float32 strided": 2,
        "meta bfloat16 strided": 1,
    }
    dump = accdump.load(path)
    names = {r.name for r in dump.records()}
    assert "parts.complex" in names and "parts.meta" in names  # their inputs are real tensors
    outputs = {r.name for r in dump.records(role=Role.OUTPUT)}
    assert "parts.complex" not in outputs and "parts.meta" not in outputs  # their outputs are not
    assert not {"probe/complex", "probe/meta"} & names
    assert not any(r.dtype.startswith("complex") or r.device == "meta" for r in dump.records())
    # and the run says so once, at the end
    model = OddModel()
    with torch.no_grad(), accdump.record(model, tmp_path / "again"):
        model(_input())
    err = capfd.readouterr().err
    assert err.count("accdump: skipped tensors it cannot record:") == 1
    assert "cpu complex64 strided (2)" in err and "meta float32 strided (2)" in err


@pytest.mark.parametrize("mode", ["stats", "tensor"])
def test_odd_values_are_recorded_as_they_are(dumps, mode):
    path, _ = dumps["golden", mode]
    dump = accdump.load(path)
    out = {r.name: r for r in dump.records(role=Role.OUTPUT)}
    x = _input()

    s = out["parts.nan_inf"].stats  # x / 0: two zeros -> NaN, the rest +-Inf
    assert (s.count, s.nan, s.posinf, s.neginf) == (8, 2, 3, 3)
    assert math.isnan(s.mean) and math.isnan(s.min) and s.sum == 0.0  # no finite value
    s = out["parts.all_nan"].stats
    assert (s.count, s.nan, s.posinf, s.neginf, s.sum, s.l2norm) == (8, 8, 0, 0, 0.0, 0.0)
    s = out["parts.all_inf"].stats
    assert (s.nan, s.posinf + s.neginf) == (0, 8)
    r = out["parts.empty"]
    assert r.shape == (2, 0) and r.stats.count == 0 and r.stats.sum == 0.0
    r = out["parts.scalar"]
    assert r.shape == () and r.stats.count == 1 and r.stats.sum == pytest.approx(float(x.sum()))
    r = out["parts.argmax"]
    assert r.dtype == "int64" and (r.stats.min, r.stats.max) == (2.0, 3.0) == tuple(
        x.argmax(-1).sort().values.tolist()
    )
    r = out["parts.mask"]
    assert r.dtype == "bool" and (r.stats.count, r.stats.sum) == (8, float((x > 0).sum()))
    r = out["parts.broadcast"]  # layout recorded as it was: 16M logical values, stride 0
    assert r.shape == (4096, 4096) and r.strides == (0, 0) and not r.contiguous
    assert (r.stats.count, r.stats.min, r.stats.max) == (4096 * 4096, 0.0, 0.0)
    p = next(dump.records(name="probe/nan_everywhere"))
    assert (p.dtype, p.stats.count, p.stats.nan) == ("bfloat16", 9, 9)
    p = next(dump.records(name="probe/zero_d_int"))
    assert (p.dtype, p.shape, p.stats.sum) == ("int64", (), 7.0)
    if mode == "tensor":  # and read back bit for bit
        assert torch.equal(dump.tensor(out["parts.argmax"]), x.argmax(-1))
        assert torch.equal(dump.tensor(out["parts.mask"]), x > 0)
        assert dump.tensor(out["parts.empty"]).shape == (2, 0)
        assert dump.tensor(out["parts.all_nan"]).isnan().all()
        assert torch.equal(dump.tensor(out["parts.all_inf"]), torch.where(x >= 0, INF, -INF))
        assert dump.tensor(out["parts.broadcast"]).shape == (4096, 4096)


@pytest.mark.parametrize("mode", ["stats", "tensor"])
def test_show_lists_odd_records(zygote, dumps, mode):
    path, _ = dumps["golden", mode]
    res = zygote.cli("show", path, "parts.*")
    assert res.rc == 0 and res.err == "", res.err
    rows = {ln.split("│")[3].strip(): ln for ln in res.out.splitlines() if ln.count("│") > 10}
    nan_inf = [ln for name, ln in rows.items() if name == "parts.nan_inf" and " output " in ln]
    assert nan_inf and "2/6" in nan_inf[0]  # NaN / Inf counts
    assert any("2x0" in ln for ln in res.out.splitlines() if "parts.empty" in ln)
    assert any("4096x4096" in ln for ln in res.out.splitlines() if "parts.broadcast" in ln)
    assert "complex64" not in res.out and "complex128" not in res.out  # no complex record


@pytest.mark.parametrize("mode", ["stats", "tensor"])
def test_compare_of_identical_odd_runs_passes(zygote, dumps, mode):
    res = zygote.cli("compare", dumps["golden", mode][0], dumps["same", mode][0], "--device", "cpu")
    assert res.rc == 0 and res.out.startswith("OK: no divergence"), (res.out, res.err)


@pytest.mark.parametrize("mode", ["stats", "tensor"])
def test_compare_names_the_record_where_nan_appears(zygote, dumps, mode, tmp_path):
    report = tmp_path / "r.json"
    res = zygote.cli(
        "compare", dumps["golden", mode][0], dumps["target", mode][0], "--device", "cpu", "--json", report
    )
    assert res.rc == 1, (res.out, res.err)
    first = res.out.splitlines()[0]
    assert first.startswith("DIVERGED") and "new NaN" in first, first


def test_a_nan_that_moves_is_a_divergence(tmp_path):
    """Same NaN count, another position: in tensor mode that is a NaN where the golden has a
    number, and compare says so (in stats mode, counts are all there is)."""
    for side, t in (("g", torch.tensor([NAN, 1.0, 2.0, 3.0])), ("t", torch.tensor([1.0, NAN, 2.0, 3.0]))):
        with accdump.record(None, tmp_path / side, mode="tensor"):
            accdump.probe("x", t)
            accdump.probe("inf_sign", torch.tensor([INF, 1.0]) * (1 if side == "g" else -1))
    result = accdump.compare(tmp_path / "g", tmp_path / "t", device="cpu")
    verdicts = {p.target.name: (p.verdict.label, p.metrics.new_nan, p.metrics.new_inf) for p in result.pairs}
    assert verdicts == {"x": ("catastrophic", 1, 0), "inf_sign": ("catastrophic", 0, 1)}
