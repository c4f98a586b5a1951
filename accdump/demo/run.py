"""The demo end to end: a golden float32 run and a target run with one planted bug, both recorded,
compared, and (for the FP8 bug) verified against the exact reference; reports in one directory."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import accdump
from accdump.demo.bugs import Planted, make_target
from accdump.demo.fp8 import save_checkpoint
from accdump.demo.model import BeforeStep, DemoLM, build_model, generate, prompt
from accdump.diff import CompareResult, compare
from accdump.diff.report import write_html, write_json
from accdump.errors import DemoError
from accdump.quant import VerifyRun, verify_dump

MARKER = ".accdump-demo"
OWNED = ("golden", "target", "checkpoint", "report.html", "compare.json", "verify.json")
EXPECTED_HYPOTHESIS = "scales-transposed"


@dataclass
class DemoResult:
    planted: Planted
    out_dir: Path
    device: str
    target_label: str  # the target's numerics, e.g. "bfloat16, FP8 MLP"
    golden_tokens: list[int]
    target_tokens: list[int]
    comparison: CompareResult
    verification: VerifyRun | None = None  # for the FP8 bug
    reports: dict[str, Path] = field(default_factory=dict)  # what -> path, inside out_dir
    seconds: float = 0.0

    @property
    def compare_found(self) -> bool:
        """compare put the first divergence where the bug was planted (or found none for "none")."""
        d = self.comparison.first_divergence
        if self.planted.module is None:
            return d is None and self.comparison.first_token_diff is None
        return (
            d is not None
            and d.attributed_to == self.planted.module
            and d.pair.target.step == self.planted.step
        )

    @property
    def verify_found(self) -> bool | None:
        """verify failed the planted FP8 layer alone, diagnosed as scales-transposed (None: not run)."""
        v = self.verification
        if self.planted.fp8_layer is None or v is None:
            return None
        failed = v.failed
        return (
            bool(failed)
            and {c.record_name for c in failed} == {self.planted.fp8_layer}
            and all(c.check.diagnosis is not None for c in failed)
            and all(c.check.diagnosis.hypothesis == EXPECTED_HYPOTHESIS for c in failed if c.check.diagnosis)
        )

    @property
    def found(self) -> bool:
        return self.compare_found and self.verify_found is not False

    @property
    def exit_code(self) -> int:
        return 0 if self.found else 1


def prepare_output(out: Path) -> Path:
    """Makes `out` ready for the demo: created, or emptied of a previous demo's output; refuses a
    directory that holds anything else."""
    if out.exists():
        if not out.is_dir():
            raise DemoError(f"{out} is a file: choose another --out")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise DemoError(f"{out} is not empty and holds no earlier demo output: choose another --out")
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `accdump demo`, which replaces this directory's contents\n")
    return out


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DemoError(f"--device must be cpu or cuda, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise DemoError(f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda: no CUDA device is available here")
    return dev


def _record(
    model: DemoLM, ids: torch.Tensor, path: Path, new_tokens: int, before_step: BeforeStep | None
) -> list[int]:
    # full tensors, not statistics: a wrong rotary embedding rotates vectors and keeps their norms,
    # which statistics cannot see, and verify needs each FP8 layer's input and output
    with accdump.record(model, path, mode="tensor"):
        return generate(model, ids, new_tokens, before_step)


def run_demo(
    bug: str = "fp8-scales",
    out_dir: str | Path = "accdump-demo",
    device: str | None = None,
    new_tokens: int = 8,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Runs the demo for `bug` (see accdump.demo.bugs.BUGS): records the golden and the target
    generation of `new_tokens` tokens under `out_dir`, compares them, verifies the FP8 layers
    when there are any, and writes report.html and compare.json there."""
    if new_tokens < 1:
        raise DemoError(f"--tokens must be at least 1, got {new_tokens}")
    started = time.perf_counter()
    dev = _device(device)
    say = progress or (lambda stage: None)
    golden = build_model().to(dev)
    target = make_target(bug, golden, dev, new_tokens)
    out = prepare_output(Path(out_dir))
    ids = prompt().to(dev)

    say("golden run (float32)")
    golden_tokens = _record(golden, ids, out / "golden", new_tokens, None)
    say(f"target run ({target.label})")
    target_tokens = _record(target.model, ids, out / "target", new_tokens, target.before_step)

    say("comparing")
    result = compare(out / "golden", out / "target", device=dev.type)
    reports = {"html": out / "report.html", "json": out / "compare.json"}
    write_html(result, reports["html"])
    write_json(result, reports["json"])
    demo = DemoResult(
        target.planted, out, str(dev), target.label, golden_tokens, target_tokens, result, reports=reports
    )
    if target.fp8_layers:
        say("verifying the FP8 layers")
        checkpoint = save_checkpoint(target.fp8_layers, out / "checkpoint")
        demo.reports["checkpoint"] = checkpoint.parent
        demo.verification = verify_dump(checkpoint.parent, out / "target", device=dev.type)
    demo.seconds = time.perf_counter() - started
    return demo
