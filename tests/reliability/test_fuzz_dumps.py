"""Damaged, foreign and wrong-version dumps given to the reader and to `accdump show`, `compare` and
`verify`: the reader raises DumpFormatError and nothing else (never a crash, a hang, or different
data read back silently); each command exits 2 with one line naming the file, no traceback unless
--debug.

Every read runs in a forked child (tests/reliability/_zygote_server.py): a damaged HDF5 file can
crash or hang libhdf5 itself, and the test must see that as a failure, not die of it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import accdump
from accdump.quant import Checkpoint, quantize_activation, quantize_fp8_blocks, reference_linear
from tests.reliability._children import DUMP_FORMAT_ERROR
from tests.reliability._zygote import assert_one_line_error

SEED = 1234
LAYER = "model.layers.0.mlp.up_proj"
LIBRARY_BUDGET_S = 8.0  # each seeded loop stops after this, having tried its minimum
CLI_BUDGET_S = 8.0
MIN_LIBRARY_VARIANTS = 60
MIN_CLI_VARIANTS = 30


# --- the clean dumps ------------------------------------------------------------------------------


class _QuantLinear(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.layer
        x2 = x.reshape(-1, x.shape[-1])
        return reference_linear(
            quantize_activation(x2.float(), q.activation, q.input_scale), q.weight, q.bias
        ).to(x.dtype)


class _Model(nn.Module):
    """Module names as the checkpoint's: model.layers.0.mlp.up_proj."""

    def __init__(self, layer):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Module()])
        self.model.layers[0].mlp = nn.Module()
        self.model.layers[0].mlp.up_proj = _QuantLinear(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.layers[0].mlp.up_proj(x)


def _verify_case(root: Path) -> tuple[Path, Path]:
    """A one-layer FP8-block checkpoint and a tensor-mode dump of a model computing it exactly."""
    gen = torch.Generator().manual_seed(SEED)
    q = quantize_fp8_blocks(torch.randn(128, 128, generator=gen) * 0.02)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    save_file(
        {f"{LAYER}.weight": q.q.view(torch.float8_e4m3fn), f"{LAYER}.weight_scale_inv": q.scale},
        str(ckpt / "model.safetensors"),
    )
    config = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    (ckpt / "config.json").write_text(json.dumps(config))
    layers, _ = Checkpoint(ckpt).quantized_layers()
    model = _Model(layers[LAYER])
    dump = root / "verify_dump"
    with torch.no_grad(), accdump.record(model, dump, mode="tensor") as rec:
        for _ in range(2):
            model(torch.randn(4, 128, generator=gen).bfloat16())
    assert rec.error is None
    return ckpt, dump


@pytest.fixture(scope="module")
def clean(tmp_path_factory, zygote):
    """The clean dumps, what the reader and each command make of them."""
    root = tmp_path_factory.mktemp("clean")
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    dumps = {}
    for mode in ("tensor", "stats", "hash"):
        dumps[mode] = root / mode
        with torch.no_grad(), accdump.record(model, dumps[mode], mode=mode, metadata={"run": mode}):
            for i in range(3):
                model(torch.linspace(-1, 1, 64).reshape(4, 16) + i)
                accdump.probe("extra", {"bf16": torch.arange(6.0).bfloat16(), "ids": torch.arange(3)})
    ckpt, dumps["verify"] = _verify_case(root)
    out = {"root": root, "dumps": dumps, "ckpt": ckpt, "digest": {}, "cli": {}}
    for kind, path in dumps.items():
        res = zygote.run("read_all", path, root / f"{kind}.digest")
        assert res.rc == 0, res.err
        out["digest"][kind] = json.loads((root / f"{kind}.digest").read_text())
        for name, argv in _commands(kind, path, path, ckpt).items():
            res = zygote.cli(*argv)
            assert res.rc in (0, 1), (name, res.rc, res.err)
            out["cli"][kind, name] = res
    return out


def _commands(kind: str, clean_dump: Path, variant: Path, ckpt: Path) -> dict[str, list]:
    """The commands run on a variant of dump `kind`, by name."""
    cmds = {
        "show": ["show", variant, "*"],
        "compare-target": ["compare", clean_dump, variant, "--device", "cpu"],
        "compare-golden": ["compare", variant, clean_dump, "--device", "cpu"],
    }
    if kind == "verify":
        cmds["verify"] = [
            "verify",
            "--checkpoint",
            ckpt,
            "--dump",
            variant,
            "--device",
            "cpu",
            "--layer",
            "*",
        ]
    return cmds


def _variant(clean, kind: str, tag: str) -> tuple[Path, list[Path]]:
    """A fresh copy of clean dump `kind` and its segment files."""
    path = clean["root"] / "variants" / tag
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(clean["dumps"][kind], path)
    return path, sorted((path / "rank00000").glob("seg*.h5"))


# --- named bad inputs: each command, one line naming the file ----------------------------------


def _set_attr(name, value):
    def edit(seg: Path) -> None:
        with h5py.File(seg, "r+") as f:
            f.attrs[name] = value

    return edit


def _replace_dataset(name, make):
    def edit(seg: Path) -> None:
        with h5py.File(seg, "r+") as f:
            del f[name]
            make(f, name)

    return edit


def _write(data: bytes):
    return lambda seg: seg.write_bytes(data)


def _truncate(fraction: float):
    return lambda seg: seg.write_bytes(seg.read_bytes()[: int(seg.stat().st_size * fraction)])


def _fifo(seg: Path) -> None:
    seg.unlink()
    os.mkfifo(seg)


def _directory(seg: Path) -> None:
    seg.unlink()
    seg.mkdir()


BAD_SEGMENTS = {
    "empty-file": _write(b""),
    "text-file": _write(b"this is not an HDF5 file\n" * 40),
    "random-bytes": _write(random.Random(SEED).randbytes(4096)),
    "hdf5-signature-only": _write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100),
    "truncated-8-bytes": lambda seg: seg.write_bytes(seg.read_bytes()[:8]),
    "truncated-half": _truncate(0.5),
    "truncated-last-byte": lambda seg: seg.write_bytes(seg.read_bytes()[:-1]),
    "version-999": _set_attr("format_version", 999),
    "version-0": _set_attr("format_version", 0),
    "version-text": _set_attr("format_version", "one"),
    "format-other": _set_attr("format", "not-accdump"),
    "user-metadata-not-json": _set_attr("user_metadata", "{broken"),
    "records-missing": lambda seg: _replace_dataset("records", lambda f, n: None)(seg),
    "records-group": _replace_dataset("records", lambda f, n: f.create_group(n)),
    "records-scalar": _replace_dataset("records", lambda f, n: f.create_dataset(n, data=5)),
    "heap-float": _replace_dataset("heap", lambda f, n: f.create_dataset(n, data=np.zeros(16))),
    "heap-2d": _replace_dataset("heap", lambda f, n: f.create_dataset(n, data=np.zeros((4, 4), np.uint8))),
    "fifo": _fifo,
    "directory": _directory,
}


METADATA_ONLY = {"user-metadata-not-json"}  # damage to what only `show` reads


@pytest.mark.parametrize("bad", list(BAD_SEGMENTS))
def test_bad_segment_is_one_clear_error_in_every_command(clean, zygote, bad):
    kind = "verify"  # the dump every command can read
    path, segs = _variant(clean, kind, f"named-{bad}")
    seg = segs[0]  # the first segment also holds the run's metadata that show prints
    BAD_SEGMENTS[bad](seg)
    res = zygote.run("read_all", path, path.parent / f"{bad}.digest", timeout=30)
    assert res.rc == DUMP_FORMAT_ERROR, f"reader: exit status {res.rc}\n{res.err[-3000:]}"
    assert str(seg) in res.err
    for name, argv in _commands(kind, clean["dumps"][kind], path, clean["ckpt"]).items():
        res = zygote.cli(*argv, timeout=30)
        if bad in METADATA_ONLY and name != "show":  # compare and verify never read the metadata
            want = clean["cli"][kind, name]
            assert (res.rc, _normalised(res.out, path, clean["dumps"][kind])) == (
                want.rc,
                _normalised(want.out, path, path),
            ), name
            continue
        assert_one_line_error(res, seg, f"{bad}: {name}")


@pytest.mark.parametrize(
    "make, names",
    [
        pytest.param(lambda p: None, "p", id="missing"),
        pytest.param(lambda p: p.mkdir(), "p", id="empty-directory"),
        pytest.param(lambda p: p.write_text("a file"), "p", id="a-file"),
        pytest.param(
            lambda p: (
                (p / "rank00000").mkdir(parents=True) or (p / "rank00000" / "seg00000000.h5").write_bytes(b"")
            ),
            "seg",
            id="only-an-empty-segment",
        ),
    ],
)
def test_not_a_dump_is_one_clear_error(clean, zygote, tmp_path, make, names):
    p = tmp_path / "not_a_dump"
    make(p)
    named = p / "rank00000" / "seg00000000.h5" if names == "seg" else p
    for name, argv in _commands("verify", clean["dumps"]["verify"], p, clean["ckpt"]).items():
        assert_one_line_error(zygote.cli(*argv, timeout=30), named, name)


def test_debug_shows_the_traceback(clean, zygote):
    path, segs = _variant(clean, "tensor", "debug")
    segs[0].write_bytes(b"garbage")
    res = zygote.cli("--debug", "show", path)
    assert res.rc == 2 and "Traceback" in res.err and "DumpFormatError" in res.err
    assert res.err.strip().splitlines()[-1].startswith("accdump: error: ") and str(segs[0]) in res.err


# --- seeded random damage, many variants ------------------------------------------------------


def _damage(data: bytes, rnd: random.Random) -> tuple[str, bytes]:
    """One random kind of damage to a segment's bytes: (what was done, the damaged bytes)."""
    b = bytearray(data)
    kind = rnd.choice(
        ["flip", "flip", "flip", "truncate", "zero-block", "random-block", "append", "swap-blocks"]
    )
    if kind == "flip":
        k = rnd.choice([1, 1, 2, 4, 16, 64, 256])
        for _ in range(k):
            b[rnd.randrange(len(b))] ^= rnd.randrange(1, 256)
        return f"flip {k} byte(s)", bytes(b)
    if kind == "truncate":
        cut = rnd.choice([0, 1, 8, 48, 512, len(b) - 1, rnd.randrange(len(b))])
        return f"truncate to {cut}", bytes(b[:cut])
    if kind in ("zero-block", "random-block"):
        n = rnd.choice([8, 64, 512, 4096])
        at = rnd.randrange(len(b))
        b[at : at + n] = bytes(n) if kind == "zero-block" else rnd.randbytes(n)
        return f"{kind} of {n} at {at}", bytes(b[: len(data)])
    if kind == "append":
        return "append 1 KiB", bytes(b) + rnd.randbytes(1024)
    n = 512
    i, j = sorted(rnd.sample(range(0, len(b) - n, 8), 2))
    b[i : i + n], b[j : j + n] = b[j : j + n], b[i : i + n]
    return f"swap blocks at {i} and {j}", bytes(b)


def _random_variant(clean, rnd: random.Random, n: int, kinds: tuple[str, ...]) -> tuple[str, Path, Path, str]:
    kind = rnd.choice(kinds)
    path, segs = _variant(clean, kind, f"random-{n}")
    seg = rnd.choice(segs)
    what, data = _damage(seg.read_bytes(), rnd)
    seg.write_bytes(data)
    return kind, path, seg, f"variant {n} ({kind}, {seg.name}: {what})"


def test_random_damage_reader_raises_dump_format_error_or_reads_the_same(clean, zygote):
    rnd = random.Random(SEED)
    counts = {"detected": 0, "harmless": 0}
    t0 = time.monotonic()
    n = 0
    while n < MIN_LIBRARY_VARIANTS or time.monotonic() - t0 < LIBRARY_BUDGET_S:
        kind, path, seg, what = _random_variant(clean, rnd, n, ("tensor", "stats", "hash", "verify"))
        n += 1
        digest = path.parent / f"random-{n}.digest"
        res = zygote.run("read_all", path, digest, timeout=30)
        assert not res.timed_out, f"{what}: the reader hung"
        if res.rc == DUMP_FORMAT_ERROR:
            assert str(seg) in res.err, f"{what}: the message does not name the file: {res.err}"
            counts["detected"] += 1
        else:
            assert res.rc == 0, f"{what}: the reader died (exit status {res.rc}):\n{res.err[-3000:]}"
            got = json.loads(digest.read_text())
            assert got == clean["digest"][kind], f"{what}: read back different data without an error"
            counts["harmless"] += 1
        shutil.rmtree(path)
    print(f"\nreader: {n} damaged dumps in {time.monotonic() - t0:.1f} s: {counts}")


def _normalised(text: str, variant: Path, clean_dump: Path) -> str:
    """`text` with the variant's path as the clean dump's, and no whitespace (lines wrap at other
    places when the paths' lengths differ)."""
    return "".join(text.replace(str(variant), str(clean_dump)).split())


def test_random_damage_commands_fail_cleanly_or_answer_the_same(clean, zygote):
    rnd = random.Random(SEED + 1)
    counts: dict[str, int] = {}
    t0 = time.monotonic()
    n = 0
    while n < MIN_CLI_VARIANTS or time.monotonic() - t0 < CLI_BUDGET_S:
        kind, path, seg, what = _random_variant(clean, rnd, n, ("tensor", "stats", "verify", "verify"))
        cmds = _commands(kind, clean["dumps"][kind], path, clean["ckpt"])
        name = list(cmds)[n % len(cmds)]
        n += 1
        res = zygote.cli(*cmds[name], timeout=30)
        if res.rc == 2:
            assert_one_line_error(res, seg, f"{what}: {name}")
            outcome = "one-line error"
        else:
            want = clean["cli"][kind, name]
            assert not res.timed_out and res.rc == want.rc, (
                f"{what}: {name}: exit {res.rc}\n{res.err[-3000:]}"
            )
            same = _normalised(res.out, path, clean["dumps"][kind]) == _normalised(want.out, path, path)
            assert same, f"{what}: {name}: other output"
            outcome = "same answer"
        counts[f"{name}: {outcome}"] = counts.get(f"{name}: {outcome}", 0) + 1
        shutil.rmtree(path)
    print(f"\ncommands: {n} damaged dumps in {time.monotonic() - t0:.1f} s: {dict(sorted(counts.items()))}")
