"""Quantized weights read lazily from safetensors checkpoints, each layer's format recognised from
its tensor names, dtypes and shapes (shared/quant_formats.md §2.1, §3, §4.1-4.4)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from accdump.errors import CheckpointError
from accdump.quant import formats
from accdump.quant.linear import QuantLinear

_WEIGHT_SUFFIXES = (".weight", ".weight_packed", "_blocks")


@dataclass(frozen=True)
class Unrecognised:
    name: str
    reason: str


class Checkpoint:
    """A safetensors checkpoint: one file, a directory of shards, or a `*.index.json`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._files: dict[str, Path] = {}  # tensor name -> file
        self._handles: dict[Path, Any] = {}
        self.config: dict[str, Any] = {}
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such file or directory")
        if self.path.is_dir():
            indexes = sorted(self.path.glob("*.safetensors.index.json"))
            files = sorted(self.path.glob("*.safetensors"))
            if indexes:
                self._read_index(indexes[0])
            elif files:
                for f in files:
                    self._read_file(f)
            else:
                raise CheckpointError(f"{self.path}: no .safetensors files or index in this directory")
            self._read_config(self.path / "config.json")
        elif self.path.name.endswith(".json"):
            self._read_index(self.path)
            self._read_config(self.path.parent / "config.json")
        else:
            self._read_file(self.path)
            self._read_config(self.path.parent / "config.json")

    def _open(self, f: Path) -> Any:
        if f not in self._handles:
            try:
                self._handles[f] = safe_open(str(f), framework="pt")
            except Exception as exc:  # safetensors raises its own error types for bad headers
                raise CheckpointError(f"{f}: not a readable safetensors file ({exc})") from None
        return self._handles[f]

    def _read_file(self, f: Path) -> None:
        for name in self._open(f).keys():
            self._files[name] = f

    def _read_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({exc})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise CheckpointError(f"{index}: not a safetensors index with a weight_map of names to files")
        for name, file in weight_map.items():
            self._files[name] = index.parent / file

    def _read_config(self, f: Path) -> None:
        if f.is_file():
            try:
                self.config = json.loads(f.read_text())
            except ValueError as exc:
                raise CheckpointError(f"{f}: not valid JSON ({exc})") from None

    @property
    def quantization_config(self) -> dict[str, Any]:
        q = self.config.get("quantization_config", {})
        return q if isinstance(q, dict) else {}

    def names(self) -> list[str]:
        return sorted(self._files)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from its file now (and only it)."""
        if name not in self._files:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        try:
            return self._open(self._files[name]).get_tensor(name)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{self._files[name]}: cannot read {name!r} ({exc})") from None

    def prefixes(self) -> list[str]:
        """Names of the layers with a weight (the part before .weight / .weight_packed / _blocks)."""
        out = set()
        for name in self._files:
            for suffix in _WEIGHT_SUFFIXES:
                if name.endswith(suffix):
                    out.add(name[: -len(suffix)])
        return sorted(out)

    def quantized_layers(self) -> tuple[dict[str, QuantLinear], list[Unrecognised]]:
        """Every quantized linear layer by name, and the quantized-looking tensors that are not
        in a recognised layout (with why)."""
        layers: dict[str, QuantLinear] = {}
        unknown: list[Unrecognised] = []
        for prefix in self.prefixes():
            try:
                layer = self.layer(prefix)
            except CheckpointError as exc:
                unknown.append(Unrecognised(prefix, str(exc)))
                continue
            if layer is not None:
                layers[prefix] = layer
        return layers, unknown

    def layer(self, prefix: str) -> QuantLinear | None:
        """The quantized linear `prefix`, None for an unquantized one; CheckpointError when its
        tensors look quantized but match no known layout."""
        return _detect(self, prefix)


def _maybe(ck: Checkpoint, name: str) -> torch.Tensor | None:
    return ck.get(name) if name in ck else None


def _scalar(t: torch.Tensor | None) -> float | None:
    return None if t is None else float(t.float().reshape(-1)[0])


def _infer_block(n: int, k: int, scale: torch.Tensor, config: dict[str, Any], prefix: str) -> tuple[int, int]:
    given = config.get("weight_block_size")
    candidates = [tuple(given)] if isinstance(given, list) and len(given) == 2 else []
    candidates += [(b, b) for b in (128, 64, 256, 32, 16)]
    for bn, bk in candidates:
        if scale.shape == (-(-n // bn), -(-k // bk)):
            return int(bn), int(bk)
    raise CheckpointError(f"{prefix}: weight [{n}, {k}] with scales {list(scale.shape)} fits no block size")


def _fp8_activation(config: dict[str, Any]) -> str:
    return "fp8_group128_ue8m0" if config.get("scale_fmt") == "ue8m0" else "fp8_group128"


def _detect(ck: Checkpoint, prefix: str) -> QuantLinear | None:
    qc = ck.quantization_config
    bias = _maybe(ck, f"{prefix}.bias")
    if f"{prefix}_blocks" in ck:
        return _gpt_oss(ck, prefix)
    packed = f"{prefix}.weight_packed" in ck
    w = ck.get(f"{prefix}.weight_packed" if packed else f"{prefix}.weight")
    if w.element_size() != 1:
        if packed:
            raise CheckpointError(
                f"{prefix}: weight_packed of dtype {w.dtype} (INT4 pack-quantized is not supported)"
            )
        return None  # an unquantized layer
    if w.dim() != 2:
        raise CheckpointError(f"{prefix}: a quantized weight must be 2-D, got shape {list(w.shape)}")
    n, k = w.shape
    scale = _maybe(ck, f"{prefix}.weight_scale")
    input_scale = _scalar(_maybe(ck, f"{prefix}.input_scale"))
    if f"{prefix}.weight_scale_inv" in ck:  # DeepSeek block FP8
        s = ck.get(f"{prefix}.weight_scale_inv")
        wq = formats.fp8_block(w, s, _infer_block(n, k, s, qc, prefix))
        return QuantLinear(prefix, wq, bias, _fp8_activation(qc))
    if scale is None:
        raise CheckpointError(f"{prefix}: a one-byte weight ({w.dtype}) with no scale tensor next to it")
    fp4 = w.dtype == torch.uint8 or w.dtype == getattr(torch, "float4_e2m1fn_x2", None)
    if fp4 and scale.dtype == torch.float8_e4m3fn and scale.shape == (n, -(-2 * k // 16)):
        if f"{prefix}.weight_scale_2" in ck:  # ModelOpt NVFP4: dequantization globals
            gs = _scalar(ck.get(f"{prefix}.weight_scale_2"))
            act = "nvfp4" if input_scale is not None else "none"
            return QuantLinear(prefix, formats.nvfp4(w, scale, gs or 1.0), bias, act, input_scale)
        if f"{prefix}.weight_global_scale" in ck:  # compressed-tensors NVFP4: quantization globals
            wgs = _scalar(ck.get(f"{prefix}.weight_global_scale")) or 1.0
            igs = _scalar(_maybe(ck, f"{prefix}.input_global_scale"))
            act = "nvfp4" if igs else "none"
            return QuantLinear(
                prefix, formats.nvfp4(w, scale, 1.0 / wgs), bias, act, 1.0 / igs if igs else None
            )
        raise CheckpointError(
            f"{prefix}: NVFP4-shaped weight and scales but no global scale "
            "(weight_scale_2 or weight_global_scale)"
        )
    e8m0 = (torch.uint8, getattr(torch, "float8_e8m0fnu", torch.uint8))
    if fp4 and scale.dtype in e8m0 and scale.shape == (n, -(-2 * k // 32)):
        return QuantLinear(prefix, formats.mxfp4(w, scale), bias, "none")
    if not w.is_floating_point():  # FP8 weights are stored as F8_* (a float8 dtype)
        raise CheckpointError(
            f"{prefix}: {w.dtype} weight {list(w.shape)} with scales {list(scale.shape)}: unknown layout"
        )
    if scale.element_size() == 1 and scale.shape == (n, -(-k // 32)):
        return QuantLinear(prefix, formats.mxfp8(w, scale), bias, "mxfp8")
    if scale.numel() == 1:
        return QuantLinear(
            prefix, formats.fp8_per_tensor(w, _scalar(scale) or 1.0), bias, "fp8_tensor", input_scale
        )
    if scale.numel() == n and (scale.dim() == 1 or scale.shape == (n, 1)):
        act = "fp8_tensor" if input_scale is not None else "fp8_token"
        return QuantLinear(prefix, formats.fp8_per_channel(w, scale), bias, act, input_scale)
    if scale.dim() == 2:
        return QuantLinear(
            prefix,
            formats.fp8_block(w, scale, _infer_block(n, k, scale, qc, prefix)),
            bias,
            _fp8_activation(qc),
        )
    raise CheckpointError(
        f"{prefix}: weight {list(w.shape)} {w.dtype} with weight_scale {list(scale.shape)} "
        f"{scale.dtype}: unknown layout"
    )


def _gpt_oss(ck: Checkpoint, prefix: str) -> QuantLinear:
    """gpt-oss MXFP4 experts, [E, N, K/32, 16] blocks and [E, N, K/32] scales: experts are
    stacked along N (row e * N + n), so one expert is rows [e * N, (e + 1) * N)."""
    blocks = ck.get(f"{prefix}_blocks")
    scales = _maybe(ck, f"{prefix}_scales")
    if scales is None or blocks.dim() < 3 or tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise CheckpointError(
            f"{prefix}: _blocks {list(blocks.shape)} need _scales of shape {list(blocks.shape[:-1])}"
        )
    rows = blocks.reshape(-1, blocks.shape[-2] * blocks.shape[-1])
    wq = formats.mxfp4(rows, scales.reshape(-1, scales.shape[-1]))
    return QuantLinear(prefix, wq, None, "none")
