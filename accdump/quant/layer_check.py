"""Judge one quantized linear layer: its production output against the exact reference computed
from its recorded input and the checkpoint, judged against the format's own noise, and, when it
fails, the known bug that reproduces it (shared/quant_formats.md §6-7)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from accdump import ops
from accdump.errors import OpInputError
from accdump.quant.formats import BlockQuantized
from accdump.quant.hypotheses import HYPOTHESES
from accdump.quant.linear import QuantLinear, quantize_activation, reference_linear

# Relative L2 error that rounding the output to its dtype alone causes (§7.2 "BF16 output
# rounding only": 0.0017), with room; plus what production accumulation orders add (§2.3).
_OUTPUT_FLOOR = {torch.bfloat16: 4e-3, torch.float16: 6e-4, torch.float32: 1e-5, torch.float64: 1e-5}
_ACCUMULATION_FLOOR = 1e-3
PASS_FACTOR = 1.5
SUSPICIOUS_FACTOR = 2.0


@dataclass(frozen=True)
class Agreement:
    """How closely an output agrees with a reference output."""

    cosine: float
    rel_l2: float
    norm_ratio: float  # ||target|| / ||reference||
    nan_mismatch: int  # positions NaN/Inf in exactly one of the two

    @classmethod
    def of(cls, reference: torch.Tensor, target: torch.Tensor) -> Agreement:
        m = ops.compare_metrics(reference, target.to(reference.device))
        return cls(m.cosine, m.rel_l2, m.norm_ratio, int(m.nan_mismatch + m.inf_mismatch))

    def within(self, tolerance: float) -> bool:
        return self.nan_mismatch == 0 and self.rel_l2 <= tolerance and abs(self.norm_ratio - 1.0) <= tolerance


@dataclass(frozen=True)
class Diagnosis:
    hypothesis: str
    description: str
    agreement: Agreement  # of the production output with the reference under the hypothesis
    also: tuple[str, ...] = ()  # other hypotheses that reproduce it as well (same re-decoding here)


@dataclass(frozen=True)
class LayerCheck:
    """The verdict on one layer (one step's call)."""

    name: str
    format: str
    activation: str  # the reference the output was judged against: "as recorded" or a quantization
    agreement: Agreement
    noise_floor: float  # relative L2 error a correct kernel may show here
    verdict: str  # pass, suspicious, fail
    target_nan: int
    diagnosis: Diagnosis | None = None
    tried: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def _judge(a: Agreement, floor: float) -> str:
    if a.nan_mismatch or math.isnan(a.rel_l2):
        return "fail"
    err = max(a.rel_l2, abs(a.norm_ratio - 1.0))
    if err <= PASS_FACTOR * floor:
        return "pass"
    return "suspicious" if err <= SUSPICIOUS_FACTOR * floor else "fail"


_RANK = {"pass": 0, "suspicious": 1, "fail": 2}

# The legitimate ways a production path may quantize the input of each format (§7.2 "legit"
# rows): a kernel matching any of them is correct.
_VARIANTS = {"fp8_group128": ("fp8_group128", "fp8_group128_ue8m0")}


def _references(
    x: torch.Tensor, weight: BlockQuantized, layer: QuantLinear, backend: ops.Backend
) -> dict[str, torch.Tensor]:
    """Reference outputs: with the input as recorded, and quantized as production may do it."""
    refs = {"as recorded": reference_linear(x, weight, layer.bias, backend)}
    if layer.activation != "none":
        for mode in _VARIANTS.get(layer.activation, (layer.activation,)):
            xq = quantize_activation(x.float(), mode, layer.input_scale)
            refs[mode] = reference_linear(xq, weight, layer.bias, backend)
    return refs


def _floors(refs: dict[str, torch.Tensor], out_dtype: torch.dtype) -> dict[str, float]:
    """What a correct kernel may differ from each reference by: output rounding and accumulation
    order; against the input as recorded also the activation quantization noise (the distance
    between that reference and the quantized-input ones)."""
    base = _OUTPUT_FLOOR.get(out_dtype, 1e-5) + _ACCUMULATION_FLOOR
    plain, *others = refs.values()
    noise = max((Agreement.of(plain, o).rel_l2 for o in others), default=0.0)
    return {mode: base + (noise if mode == "as recorded" else 0.0) for mode in refs}


def _best(agreements: dict[str, Agreement], floors: dict[str, float]) -> str:
    """The reference the output is judged against: the best verdict, then the smallest error
    relative to its floor."""
    return min(
        agreements,
        key=lambda m: (_RANK[_judge(agreements[m], floors[m])], agreements[m].rel_l2 / floors[m]),
    )


def verify_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    layer: QuantLinear,
    diagnose: bool = True,
    backend: ops.Backend = "auto",
) -> LayerCheck:
    """Judges the production output `y` [..., N] of `layer` for input `x` [..., K]."""
    n, k = layer.weight.shape
    if x.shape[-1] != k or y.shape[-1] != n:
        raise OpInputError(
            f"{layer.name}: the weight is [{n}, {k}] but the recorded input is {list(x.shape)} "
            f"and the output {list(y.shape)}"
        )
    x2, y2 = x.reshape(-1, k), y.reshape(-1, n)
    if x2.shape[0] != y2.shape[0]:
        raise OpInputError(f"{layer.name}: {x2.shape[0]} input rows but {y2.shape[0]} output rows")
    weight = layer.weight.to(x2.device)
    with torch.no_grad():
        refs = _references(x2, weight, layer, backend)
    floors = _floors(refs, y.dtype)
    agreements = {mode: Agreement.of(ref, y2) for mode, ref in refs.items()}
    best = _best(agreements, floors)
    verdict = _judge(agreements[best], floors[best])
    target_nan = int((~torch.isfinite(y2)).sum())
    check = LayerCheck(layer.name, weight.format, best, agreements[best], floors[best], verdict, target_nan)
    if verdict == "pass" or not diagnose:
        return check
    return _diagnose(check, x2, y2, weight, layer, floors, backend)


def _diagnose(
    check: LayerCheck,
    x: torch.Tensor,
    y: torch.Tensor,
    weight: BlockQuantized,
    layer: QuantLinear,
    floors: dict[str, float],
    backend: ops.Backend,
) -> LayerCheck:
    matches: list[tuple[float, Diagnosis]] = []
    tried = []
    for hyp in HYPOTHESES:
        alt = hyp.apply(weight)
        if alt is None:
            continue
        tried.append(hyp.name)
        with torch.no_grad():
            refs = _references(x, alt, layer, backend)
        for mode, ref in refs.items():
            a = Agreement.of(ref, y)
            if _judge(a, floors[mode]) != "pass":
                continue
            matches.append((a.rel_l2 / floors[mode], Diagnosis(hyp.name, hyp.description, a)))
    if not matches:
        return dataclasses.replace(check, tried=tried)
    matches.sort(key=lambda m: m[0])
    score, found = matches[0]
    also = tuple(
        dict.fromkeys(
            d.hypothesis for s, d in matches[1:] if s <= score * 1.01 and d.hypothesis != found.hypothesis
        )
    )
    return dataclasses.replace(check, diagnosis=dataclasses.replace(found, also=also), tried=tried)
