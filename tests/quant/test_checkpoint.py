"""Checkpoint: every supported layout written with safetensors in a temporary directory, detected
with its format, block, global-scale direction and activation quantization; exact values against
the hand vectors of shared/quant_formats.md §8.1-8.3; sharded layouts; and the failures, each a
CheckpointError that names the file or the layer."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from accdump.errors import CheckpointError
from accdump.quant import (
    BlockQuantized,
    Checkpoint,
    QuantLinear,
    quantize_fp8_blocks,
    quantize_fp8_groups,
    quantize_fp8_tensor,
    quantize_mx,
    quantize_nvfp4,
    reference_linear,
)

E4M3 = torch.float8_e4m3fn


def write(
    directory: Path,
    tensors: dict[str, torch.Tensor],
    config: dict | None = None,
    name: str = "model.safetensors",
) -> Path:
    """Writes one safetensors file (and config.json next to it); returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(path))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return path


def u8(hex_rows: list[str]) -> torch.Tensor:
    return torch.tensor([[int(b, 16) for b in row.split()] for row in hex_rows], dtype=torch.uint8)


def f32(v: float) -> float:
    """v as the float32 a checkpoint stores."""
    return float(torch.tensor(v, dtype=torch.float32))


def only_layer(ck: Checkpoint) -> QuantLinear:
    layers, unknown = ck.quantized_layers()
    assert unknown == []
    assert len(layers) == 1, sorted(layers)
    return next(iter(layers.values()))


def structured(gen: torch.Generator, n: int, k: int, scale: float = 0.05) -> torch.Tensor:
    """Weights whose row and column magnitudes vary log-normally (as LLM weights do)."""
    rows = torch.exp(0.7 * torch.randn(n, 1, generator=gen))
    cols = torch.exp(0.7 * torch.randn(1, k, generator=gen))
    return torch.randn(n, k, generator=gen) * rows * cols * scale


# --- hand test vectors (quant_formats.md §8) ------------------------------------------------------

# §8.3: FP8 block-scaled with a 2 x 2 block.
FP8_BYTES = ["38 B8 40 7E 01", "3C 00 C0 80 08", "44 34 30 2C FE"]
FP8_SCALE_INV = [[0.5, 2.0, 0.25], [0.015625, 8.0, 3.0]]
FP8_DEQUANT = [
    [0.5, -0.5, 4.0, 896.0, 0.00048828125],
    [0.75, 0.0, -4.0, -0.0, 0.00390625],
    [0.046875, 0.01171875, 4.0, 3.0, -1344.0],
]
FP8_X = [1.0, -2.0, 0.5, 0.25, 4.0]
FP8_Y = [227.501953125, -1.234375, -5373.2265625]

# §8.2: NVFP4, 2 rows x 32.
NVFP4_BYTES = [
    "10 32 54 76 98 BA DC FE 07 70 1F 2E 3D 4C 5B 6A",
    "77 77 77 77 77 77 77 77 21 21 21 21 9A 9A 9A 9A",
]
NVFP4_SCALE_BYTES = ["38 4C", "30 7E"]  # 1.0 6.0 / 0.5 448.0
NVFP4_DEQUANT = [
    [0, 0.03125, 0.0625, 0.09375, 0.125, 0.1875, 0.25, 0.375]
    + [-0.0, -0.03125, -0.0625, -0.09375, -0.125, -0.1875, -0.25, -0.375]
    + [
        2.25,
        0,
        0,
        2.25,
        -2.25,
        0.1875,
        -1.5,
        0.375,
        -1.125,
        0.5625,
        -0.75,
        0.75,
        -0.5625,
        1.125,
        -0.375,
        1.5,
    ],
    [0.1875] * 16 + [14, 28] * 4 + [-28, -14] * 4,
]
NVFP4_Y = [46.6875, -1262.5]  # x = 1..32
NVFP4_Y_ALTERNATING = [-4.3125, -54.5]  # x = 1, 0, 1, 0, ...

# §8.1: MXFP4, 2 rows x 32, one block per row.
MXFP4_BYTES = [
    "10 32 54 76 98 BA DC FE 07 70 1F 2E 3D 4C 5B 6A",
    "21 43 65 07 A9 CB ED 8F 11 22 33 44 55 66 77 70",
]
MXFP4_SCALES = [[0x7F], [0x7C]]
MXFP4_DEQUANT = [
    [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    + [6, 0, 0, 6, -6, 0.5, -4, 1, -3, 1.5, -2, 2, -1.5, 3, -1, 4],
    [0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.75, 0, -0.0625, -0.125, -0.1875, -0.25, -0.375, -0.5]
    + [-0.75, -0.0, 0.0625, 0.0625, 0.125, 0.125, 0.1875, 0.1875, 0.25, 0.25, 0.375, 0.375, 0.5, 0.5]
    + [0.75, 0.75, 0, 0.75],
]
MXFP4_Y = [4.5, 123.75]  # x = 1..32


def assert_exact(got: torch.Tensor, expected: list[list[float]]) -> None:
    """Bit-exact, signs of zeros included."""
    want = torch.tensor(expected, dtype=torch.float32)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got, want), (got - want).abs().max()
    assert torch.equal(torch.signbit(got), torch.signbit(want))


def test_fp8_block_hand_vector_deepseek(tmp_path):
    config = {
        "quantization_config": {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [2, 2],
        }
    }
    write(
        tmp_path,
        {
            "model.layers.0.self_attn.q_proj.weight": u8(FP8_BYTES).view(E4M3),
            "model.layers.0.self_attn.q_proj.weight_scale_inv": torch.tensor(FP8_SCALE_INV),
        },
        config,
    )
    ck = Checkpoint(tmp_path)
    layer = ck.layer("model.layers.0.self_attn.q_proj")
    assert layer is not None and layer.name == "model.layers.0.self_attn.q_proj"
    w = layer.weight
    assert (w.format, w.element, w.block, w.shape, w.global_scale) == (
        "fp8_block",
        "e4m3fn",
        (2, 2),
        (3, 5),
        1.0,
    )
    assert layer.activation == "fp8_group128" and layer.input_scale is None and layer.bias is None
    assert_exact(w.dequantize(), FP8_DEQUANT)
    y = reference_linear(torch.tensor([FP8_X]), w)
    assert torch.equal(y, torch.tensor([FP8_Y]))


def test_fp8_block_needs_the_configured_block_size(tmp_path):
    """Without weight_block_size a [3, 5] weight with [2, 3] scales fits none of the usual blocks."""
    path = write(
        tmp_path,
        {"q.weight": u8(FP8_BYTES).view(E4M3), "q.weight_scale_inv": torch.tensor(FP8_SCALE_INV)},
    )
    with pytest.raises(CheckpointError, match=r"^q: weight \[3, 5\] with scales \[2, 3\] fits no block size"):
        Checkpoint(path).layer("q")


def test_ue8m0_scale_fmt_selects_power_of_two_activation_scales(tmp_path):
    wq = quantize_fp8_blocks(torch.randn(128, 256, generator=torch.Generator().manual_seed(0)))
    config = {
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128], "scale_fmt": "ue8m0"}
    }
    write(tmp_path, {"p.weight": wq.q.view(E4M3), "p.weight_scale_inv": wq.scale}, config)
    assert only_layer(Checkpoint(tmp_path)).activation == "fp8_group128_ue8m0"


def nvfp4_hand_tensors(convention: str, with_input: bool) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {"mlp.up.weight_scale": u8(NVFP4_SCALE_BYTES).view(E4M3)}
    if convention == "modelopt":  # dequantization globals
        t["mlp.up.weight"] = u8(NVFP4_BYTES)
        t["mlp.up.weight_scale_2"] = torch.tensor(0.0625)
        if with_input:
            t["mlp.up.input_scale"] = torch.tensor(0.25)
    else:  # compressed-tensors: quantization globals (divisors)
        t["mlp.up.weight_packed"] = u8(NVFP4_BYTES)
        t["mlp.up.weight_global_scale"] = torch.tensor([16.0])
        if with_input:
            t["mlp.up.input_global_scale"] = torch.tensor([4.0])
    return t


@pytest.mark.parametrize("with_input", [True, False], ids=["w4a4", "w4a16"])
def test_nvfp4_hand_vector_both_global_scale_conventions(tmp_path, with_input):
    """CT weight_global_scale 16.0 (a divisor) and ModelOpt weight_scale_2 0.0625 (a multiplier)
    describe the same weight: identical dequantized values, equal to §8.2."""
    got = {}
    for convention in ("modelopt", "compressed-tensors"):
        path = write(tmp_path / convention, nvfp4_hand_tensors(convention, with_input))
        layer = Checkpoint(path).layer("mlp.up")
        assert layer is not None
        w = layer.weight
        assert (w.format, w.element, w.block, w.shape) == ("nvfp4", "e2m1", (1, 16), (2, 32)), convention
        assert w.global_scale == 0.0625, convention
        if with_input:
            assert (layer.activation, layer.input_scale) == ("nvfp4", 0.25), convention
        else:
            assert (layer.activation, layer.input_scale) == ("none", None), convention
        got[convention] = w.dequantize()
        assert_exact(got[convention], NVFP4_DEQUANT)
        x = torch.arange(1, 33, dtype=torch.float32)[None]
        assert torch.equal(reference_linear(x, w), torch.tensor([NVFP4_Y]))
        x_alt = (torch.arange(32) % 2 == 0).float()[None]
        assert torch.equal(reference_linear(x_alt, w), torch.tensor([NVFP4_Y_ALTERNATING]))
    assert torch.equal(got["modelopt"], got["compressed-tensors"])


def test_nvfp4_weight_stored_as_float4_dtype(tmp_path):
    """A torch float4_e2m1fn_x2 weight (safetensors F4, header shape doubled) reads like U8 bytes."""
    t = nvfp4_hand_tensors("modelopt", False)
    t["mlp.up.weight"] = t["mlp.up.weight"].view(torch.float4_e2m1fn_x2)
    layer = only_layer(Checkpoint(write(tmp_path, t)))
    assert (layer.weight.format, layer.weight.shape) == ("nvfp4", (2, 32))
    assert_exact(layer.weight.dequantize(), NVFP4_DEQUANT)


@pytest.mark.parametrize("layout", ["compressed-tensors", "gpt-oss"])
def test_mxfp4_hand_vector(tmp_path, layout):
    if layout == "compressed-tensors":
        tensors = {
            "mlp.down.weight_packed": u8(MXFP4_BYTES),
            "mlp.down.weight_scale": torch.tensor(MXFP4_SCALES, dtype=torch.uint8),
        }
        prefix = "mlp.down"
    else:  # blocks [E=1, out=2, G=1, 16], scales [1, 2, 1]
        tensors = {
            "model.layers.0.mlp.experts.down_proj_blocks": u8(MXFP4_BYTES).reshape(1, 2, 1, 16),
            "model.layers.0.mlp.experts.down_proj_scales": torch.tensor(MXFP4_SCALES, dtype=torch.uint8)[
                None
            ],
            "model.layers.0.mlp.experts.down_proj_bias": torch.zeros(1, 2),
        }
        prefix = "model.layers.0.mlp.experts.down_proj"
    layer = only_layer(Checkpoint(write(tmp_path, tensors)))
    assert layer.name == prefix
    w = layer.weight
    assert (w.format, w.element, w.block, w.shape, w.global_scale) == ("mxfp4", "e2m1", (1, 32), (2, 32), 1.0)
    assert (layer.activation, layer.input_scale) == ("none", None)
    assert_exact(w.dequantize(), MXFP4_DEQUANT)
    x = torch.arange(1, 33, dtype=torch.float32)[None]
    assert torch.equal(reference_linear(x, w), torch.tensor([MXFP4_Y]))


# --- every layout, with bytes made by the package's quantizers ------------------------------------


@dataclass(frozen=True)
class Case:
    """One checkpoint layout: its tensors, the quantized weight they hold and what detection
    must report."""

    tensors: dict[str, torch.Tensor]
    source: BlockQuantized  # the quantizer's output the tensors were written from
    original: torch.Tensor  # the float weight before quantization
    format: str
    block: tuple[int, int]
    activation: str
    input_scale: float | None = None
    config: dict | None = None
    rel_noise: float = 0.05  # quantization noise allowed against the original weight


P = "model.layers.0.mlp.proj"  # every case's layer prefix


def deepseek_fp8(gen: torch.Generator) -> Case:
    w = structured(gen, 200, 300)  # partial last blocks in both directions: scales [2, 3]
    q = quantize_fp8_blocks(w)
    assert q.scale.shape == (2, 3)
    t = {f"{P}.weight": q.q.view(E4M3), f"{P}.weight_scale_inv": q.scale}
    config = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    return Case(t, q, w, "fp8_block", (128, 128), "fp8_group128", config=config)


def ct_fp8_block(gen: torch.Generator) -> Case:
    w = structured(gen, 256, 384)
    q = quantize_fp8_blocks(w)
    t = {f"{P}.weight": q.q.view(E4M3), f"{P}.weight_scale": q.scale}
    return Case(t, q, w, "fp8_block", (128, 128), "fp8_group128")


def ct_fp8_tensor(gen: torch.Generator) -> Case:
    w = structured(gen, 48, 64)
    q = quantize_fp8_tensor(w)
    q = q.replace(global_scale=f32(q.global_scale))
    t = {
        f"{P}.weight": q.q.view(E4M3),
        f"{P}.weight_scale": torch.tensor(q.global_scale),
        f"{P}.input_scale": torch.tensor(0.015625),
    }
    return Case(t, q, w, "fp8_tensor", (1, 1), "fp8_tensor", 0.015625)


def ct_fp8_channel(gen: torch.Generator, shape: tuple[int, ...]) -> Case:
    w = structured(gen, 48, 64)
    q = quantize_fp8_groups(w, 64, eps=1e-12)  # one scale per output row
    t = {f"{P}.weight": q.q.view(E4M3), f"{P}.weight_scale": q.scale.reshape(shape)}
    return Case(t, q, w, "fp8_channel", (1, 64), "fp8_token")


def mxfp8(gen: torch.Generator) -> Case:
    w = structured(gen, 48, 96)
    q = quantize_mx(w, "e4m3fn")
    t = {f"{P}.weight": q.q.view(E4M3), f"{P}.weight_scale": q.scale}
    return Case(t, q, w, "mxfp8", (1, 32), "mxfp8", rel_noise=0.1)


def nvfp4_source(gen: torch.Generator) -> tuple[torch.Tensor, BlockQuantized]:
    w = structured(gen, 48, 64, scale=0.1)
    # A power-of-two global: exact as a ModelOpt multiplier and as a compressed-tensors divisor.
    gs = 2.0**-9
    assert float(w.abs().amax()) < 6 * 448 * gs
    return w, quantize_nvfp4(w, gs)


def modelopt_nvfp4(gen: torch.Generator) -> Case:
    w, q = nvfp4_source(gen)
    t = {
        f"{P}.weight": q.q,
        f"{P}.weight_scale": q.scale.view(E4M3),
        f"{P}.weight_scale_2": torch.tensor(q.global_scale),
        f"{P}.input_scale": torch.tensor(2.0**-7),
    }
    config = {"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16}}
    return Case(t, q, w, "nvfp4", (1, 16), "nvfp4", 2.0**-7, config, rel_noise=0.2)


def ct_nvfp4(gen: torch.Generator) -> Case:
    w, q = nvfp4_source(gen)
    t = {
        f"{P}.weight_packed": q.q,
        f"{P}.weight_scale": q.scale.view(E4M3),
        f"{P}.weight_global_scale": torch.tensor([1.0 / q.global_scale]),
        f"{P}.input_global_scale": torch.tensor([2.0**7]),
    }
    config = {"quantization_config": {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}}
    return Case(t, q, w, "nvfp4", (1, 16), "nvfp4", 2.0**-7, config, rel_noise=0.2)


def ct_mxfp4(gen: torch.Generator) -> Case:
    w = structured(gen, 48, 96)
    q = quantize_mx(w, "e2m1")
    t = {f"{P}.weight_packed": q.q, f"{P}.weight_scale": q.scale}
    config = {"quantization_config": {"quant_method": "compressed-tensors", "format": "mxfp4-pack-quantized"}}
    return Case(t, q, w, "mxfp4", (1, 32), "none", config=config, rel_noise=0.2)


def gpt_oss(gen: torch.Generator) -> Case:
    experts, n, k = 3, 16, 64
    w = structured(gen, experts * n, k)
    q = quantize_mx(w, "e2m1")
    t = {
        f"{P}_blocks": q.q.reshape(experts, n, k // 32, 16),
        f"{P}_scales": q.scale.reshape(experts, n, k // 32),
        f"{P}_bias": torch.zeros(experts, n),
    }
    return Case(t, q, w, "mxfp4", (1, 32), "none", rel_noise=0.2)


CASES: dict[str, Callable[[torch.Generator], Case]] = {
    "deepseek-fp8-block": deepseek_fp8,
    "ct-fp8-block": ct_fp8_block,
    "ct-fp8-tensor": ct_fp8_tensor,
    "ct-fp8-channel-[N]": lambda g: ct_fp8_channel(g, (48,)),
    "ct-fp8-channel-[N,1]": lambda g: ct_fp8_channel(g, (48, 1)),
    "mxfp8": mxfp8,
    "modelopt-nvfp4": modelopt_nvfp4,
    "ct-nvfp4": ct_nvfp4,
    "ct-mxfp4": ct_mxfp4,
    "gpt-oss-mxfp4": gpt_oss,
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_layout_detected_and_decoded_exactly(tmp_path, gen, case):
    c = CASES[case](gen)
    ck = Checkpoint(write(tmp_path, c.tensors, c.config))
    layer = only_layer(ck)
    assert layer.name == P
    direct = ck.layer(P)
    assert direct is not None and torch.equal(direct.weight.dequantize(), layer.weight.dequantize())
    w = layer.weight
    assert (w.format, w.block, w.shape) == (c.format, c.block, tuple(c.original.shape))
    assert layer.activation == c.activation
    assert layer.input_scale == c.input_scale
    deq = w.dequantize()
    assert torch.equal(deq, c.source.dequantize()), (deq - c.source.dequantize()).abs().max()
    # and independently of the decoder: the values are the original weight up to quantization noise
    rel = float((deq - c.original).norm() / c.original.norm())
    assert rel < c.rel_noise, rel


def test_global_scale_direction_on_quantizer_output(tmp_path):
    """The same NVFP4 bytes under both conventions; a direction mix-up would be off by gs^2."""
    mo, ct = modelopt_nvfp4(torch.Generator().manual_seed(7)), ct_nvfp4(torch.Generator().manual_seed(7))
    assert torch.equal(mo.source.q, ct.source.q) and torch.equal(mo.source.scale, ct.source.scale)
    a = only_layer(Checkpoint(write(tmp_path / "mo", mo.tensors))).weight
    b = only_layer(Checkpoint(write(tmp_path / "ct", ct.tensors))).weight
    assert a.global_scale == b.global_scale == 2.0**-9
    assert torch.equal(a.dequantize(), b.dequantize())


# --- sharded checkpoints and unquantized tensors --------------------------------------------------


def two_layer_tensors(gen: torch.Generator) -> dict[str, torch.Tensor]:
    a = quantize_fp8_blocks(structured(gen, 256, 128))
    b = quantize_nvfp4(structured(gen, 32, 64))
    return {
        "model.layers.0.self_attn.o_proj.weight": a.q.view(E4M3),
        "model.layers.0.self_attn.o_proj.weight_scale_inv": a.scale,
        "model.layers.0.mlp.up_proj.weight": b.q,
        "model.layers.0.mlp.up_proj.weight_scale": b.scale.view(E4M3),
        "model.layers.0.mlp.up_proj.weight_scale_2": torch.tensor(b.global_scale),
        "model.embed_tokens.weight": torch.randn(64, 128, generator=gen).bfloat16(),
        "model.norm.weight": torch.ones(128),
    }


SHARD_OF = {  # a layer's weight and its scale in different shards, as real indexes do
    "model.layers.0.self_attn.o_proj.weight": 1,
    "model.layers.0.self_attn.o_proj.weight_scale_inv": 2,
    "model.layers.0.mlp.up_proj.weight": 2,
    "model.layers.0.mlp.up_proj.weight_scale": 1,
    "model.layers.0.mlp.up_proj.weight_scale_2": 2,
    "model.embed_tokens.weight": 1,
    "model.norm.weight": 2,
}


def shard_name(i: int) -> str:
    return f"model-0000{i}-of-00002.safetensors"


def write_shards(directory: Path, tensors: dict[str, torch.Tensor], index: bool) -> None:
    for i in (1, 2):
        write(directory, {k: v for k, v in tensors.items() if SHARD_OF[k] == i}, name=shard_name(i))
    config = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    (directory / "config.json").write_text(json.dumps(config))
    if index:
        weight_map = {k: shard_name(SHARD_OF[k]) for k in tensors}
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
        )


def assert_two_layers(ck: Checkpoint, tensors: dict[str, torch.Tensor]) -> None:
    assert ck.names() == sorted(tensors)
    assert ck.quantization_config["weight_block_size"] == [128, 128]
    layers, unknown = ck.quantized_layers()
    assert unknown == []
    assert sorted(layers) == ["model.layers.0.mlp.up_proj", "model.layers.0.self_attn.o_proj"]
    assert layers["model.layers.0.self_attn.o_proj"].weight.format == "fp8_block"
    assert layers["model.layers.0.mlp.up_proj"].weight.format == "nvfp4"
    for name, t in tensors.items():
        assert torch.equal(ck.get(name).reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name


@pytest.mark.parametrize("open_with", ["directory", "index"])
def test_sharded_checkpoint_with_index(tmp_path, gen, open_with):
    tensors = two_layer_tensors(gen)
    write_shards(tmp_path, tensors, index=True)
    # a stray file the index does not list is not part of the checkpoint
    write(tmp_path, {"stray.weight": torch.zeros(2, 2, dtype=torch.uint8)}, name="stray.safetensors")
    path = tmp_path if open_with == "directory" else tmp_path / "model.safetensors.index.json"
    assert_two_layers(Checkpoint(path), tensors)


def test_directory_of_plain_shards_without_index(tmp_path, gen):
    tensors = two_layer_tensors(gen)
    write_shards(tmp_path, tensors, index=False)
    assert not list(tmp_path.glob("*.index.json"))
    assert_two_layers(Checkpoint(tmp_path), tensors)


def test_unquantized_layers_are_ignored(tmp_path, gen):
    tensors = two_layer_tensors(gen)
    tensors |= {
        "lm_head.weight": torch.randn(64, 128, generator=gen).bfloat16(),
        "model.layers.0.mlp.gate.weight": torch.randn(8, 128, generator=gen),  # MoE router, f32
        "model.layers.0.mlp.gate.e_score_correction_bias": torch.zeros(8),
        "model.layers.0.input_layernorm.weight": torch.ones(128, dtype=torch.bfloat16),
        "model.layers.0.mlp.dense_proj.weight": torch.randn(32, 128, generator=gen).half(),
        "model.layers.0.mlp.dense_proj.bias": torch.zeros(32, dtype=torch.float16),
    }
    ck = Checkpoint(write(tmp_path, tensors))
    layers, unknown = ck.quantized_layers()
    assert sorted(layers) == ["model.layers.0.mlp.up_proj", "model.layers.0.self_attn.o_proj"]
    assert unknown == []
    for prefix in (
        "lm_head",
        "model.embed_tokens",
        "model.layers.0.mlp.gate",
        "model.layers.0.mlp.dense_proj",
    ):
        assert ck.layer(prefix) is None, prefix


def test_bias_is_attached(tmp_path, gen):
    q = quantize_fp8_blocks(structured(gen, 128, 128))
    bias = torch.randn(128, generator=gen).bfloat16()
    ck = Checkpoint(
        write(tmp_path, {"o.weight": q.q.view(E4M3), "o.weight_scale_inv": q.scale, "o.bias": bias})
    )
    layer = ck.layer("o")
    assert layer is not None and layer.bias is not None and torch.equal(layer.bias, bias)


# --- failures: CheckpointError naming the file or the layer ---------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "no" / "such.safetensors"
    with pytest.raises(CheckpointError, match="no such file or directory") as info:
        Checkpoint(missing)
    assert str(missing) in str(info.value)


def test_directory_without_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no .safetensors files") as info:
        Checkpoint(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\xff" * 64])
def test_not_a_safetensors_file(tmp_path, content):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(content)
    for path in (bad, tmp_path):
        with pytest.raises(CheckpointError, match="not a readable safetensors file") as info:
            Checkpoint(path)
        assert str(bad) in str(info.value)


def assert_bad_index(tmp_path: Path, content: str) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(content)
    for path in (index, tmp_path):
        with pytest.raises(CheckpointError, match="not a safetensors index with a weight_map") as info:
            Checkpoint(path)
        assert str(index) in str(info.value)


@pytest.mark.parametrize(
    "content", ['{"metadata": {}}', "[1, 2]", "{not json", ""], ids=["no-map", "list", "bad-json", "empty"]
)
def test_index_without_weight_map(tmp_path, content):
    assert_bad_index(tmp_path, content)


@pytest.mark.parametrize(
    "content",
    ['{"weight_map": ["a.weight"]}', '{"weight_map": {"a.weight": 1}}'],
    ids=["map-is-a-list", "file-not-a-string"],
)
def test_index_with_malformed_weight_map(tmp_path, content):
    assert_bad_index(tmp_path, content)


def test_index_naming_a_missing_shard(tmp_path, gen):
    tensors = two_layer_tensors(gen)
    write_shards(tmp_path, tensors, index=True)
    (tmp_path / shard_name(2)).unlink()
    ck = Checkpoint(tmp_path)  # lazy: nothing read yet
    with pytest.raises(CheckpointError) as info:
        ck.layer("model.layers.0.self_attn.o_proj")
    assert shard_name(2) in str(info.value)
    layers, unknown = ck.quantized_layers()
    assert layers == {}
    # every layer with a tensor in the missing shard (unquantized or not: it cannot be told)
    assert {u.name for u in unknown} == {
        "model.layers.0.mlp.up_proj",
        "model.layers.0.self_attn.o_proj",
        "model.norm",
    }
    assert all(shard_name(2) in u.reason for u in unknown)


def test_invalid_config_json(tmp_path, gen):
    write(tmp_path, two_layer_tensors(gen))
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON") as info:
        Checkpoint(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


def bad_layers(gen: torch.Generator) -> dict[str, tuple[dict[str, torch.Tensor], str]]:
    """Layer prefix -> (its tensors, a regex its error must match)."""
    fp8 = quantize_fp8_blocks(structured(gen, 256, 256))
    fp4 = quantize_nvfp4(structured(gen, 32, 64))
    return {
        "bad.no_scale": ({"bad.no_scale.weight": fp8.q.view(E4M3)}, "one-byte weight .* with no scale"),
        "bad.no_scale_u8": ({"bad.no_scale_u8.weight": fp8.q}, "one-byte weight .* with no scale"),
        "bad.nvfp4_no_global": (
            {"bad.nvfp4_no_global.weight": fp4.q, "bad.nvfp4_no_global.weight_scale": fp4.scale.view(E4M3)},
            "no global scale",
        ),
        "bad.block_shape": (
            {
                "bad.block_shape.weight": fp8.q.view(E4M3),
                "bad.block_shape.weight_scale_inv": torch.ones(3, 3),
            },
            r"weight \[256, 256\] with scales \[3, 3\] fits no block size",
        ),
        "bad.block_shape_ct": (
            {
                "bad.block_shape_ct.weight": fp8.q.view(E4M3),
                "bad.block_shape_ct.weight_scale": torch.ones(5, 7),
            },
            r"fits no block size",
        ),
        "bad.int4": (
            {
                "bad.int4.weight_packed": torch.zeros(32, 8, dtype=torch.int32),
                "bad.int4.weight_scale": torch.ones(32, 1, dtype=torch.bfloat16),
                "bad.int4.weight_shape": torch.tensor([32, 64], dtype=torch.int32),
            },
            r"weight_packed of dtype torch\.int32 \(INT4 pack-quantized is not supported\)",
        ),
        "bad.three_d": (
            {
                "bad.three_d.weight": torch.zeros(2, 4, 4, dtype=torch.uint8),
                "bad.three_d.weight_scale": torch.ones(1),
            },
            r"must be 2-D",
        ),
        "bad.gpt_oss_no_scales": (
            {"bad.gpt_oss_no_scales_blocks": torch.zeros(1, 4, 2, 16, dtype=torch.uint8)},
            "_scales",
        ),
    }


def test_unknown_layouts_name_the_layer(tmp_path, gen):
    bad = bad_layers(gen)
    good = quantize_fp8_blocks(structured(gen, 128, 128))
    tensors = {"good.weight": good.q.view(E4M3), "good.weight_scale_inv": good.scale}
    for layer_tensors, _ in bad.values():
        tensors |= layer_tensors
    ck = Checkpoint(write(tmp_path, tensors))
    for prefix, (_, pattern) in bad.items():
        with pytest.raises(CheckpointError, match=pattern) as info:
            ck.layer(prefix)
        assert str(info.value).startswith(f"{prefix}:"), str(info.value)
    layers, unknown = ck.quantized_layers()
    assert sorted(layers) == ["good"]  # one bad layer does not hide the others
    assert sorted(u.name for u in unknown) == sorted(bad)
    for u in unknown:
        assert u.reason.startswith(f"{u.name}:"), u.reason


def test_get_unknown_tensor_names_the_checkpoint(tmp_path, gen):
    path = write(tmp_path, two_layer_tensors(gen))
    with pytest.raises(CheckpointError, match="no tensor named 'nope.weight'") as info:
        Checkpoint(path).get("nope.weight")
    assert str(path) in str(info.value)


# --- partial last block ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [24, 8])
def test_nvfp4_partial_last_block(tmp_path, gen, k):
    w = structured(gen, 8, k)
    q = quantize_nvfp4(w, 2.0**-9)
    assert q.scale.shape == (8, -(-k // 16))
    t = {"p.weight": q.q, "p.weight_scale": q.scale.view(E4M3), "p.weight_scale_2": torch.tensor(2.0**-9)}
    ck = Checkpoint(write(tmp_path, t))
    layer = ck.layer("p")
    assert layer is not None and layer.weight.format == "nvfp4"
    assert torch.equal(layer.weight.dequantize(), q.dequantize())
