"""The presets: which tool wrote a folder (detected from its layout where that is unambiguous),
the source that reads it, and the renaming rules shipped for its names."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accdump.importers.msprobe import MsprobeSource, find_dump_jsons
from accdump.importers.sglang import SglangSource, parse_tags
from accdump.importers.source import ImportSource
from accdump.importers.trtllm import TrtllmNpySource, TrtllmTorchSource

RULES_DIR = Path(__file__).parent / "rules"
_SAMPLE = 2000  # files looked at to recognise a layout
_TRT_ITER = re.compile(r"iteration_\d+")
_TRT_TORCH = re.compile(r"\d+\.[^-]+(?:-\d+\.[^-]+)*-(?:input|output)\..+\.pt")


def _sample(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        found += [Path(dirpath) / f for f in sorted(filenames)]
        if len(found) >= _SAMPLE:
            break
    return found


def _is_msprobe(root: Path, files: list[Path]) -> bool:
    return bool(find_dump_jsons(root))


def _is_sglang(root: Path, files: list[Path]) -> bool:
    return any(p.suffix == ".pt" and parse_tags(p.stem) is not None for p in files)


def _is_trtllm(root: Path, files: list[Path]) -> bool:
    return any(
        p.suffix == ".npy"
        and _TRT_ITER.fullmatch(p.absolute().parent.name)
        and p.absolute().parent.parent.name.startswith("TP_")
        for p in files
    )


def _is_trtllm_torch(root: Path, files: list[Path]) -> bool:
    return any(_TRT_TORCH.fullmatch(p.name) and p.parent.name.startswith("rank") for p in files)


@dataclass(frozen=True)
class Preset:
    name: str
    tool: str
    layout: str
    source: type[ImportSource]
    detect: Callable[[Path, list[Path]], bool]
    rules: str = ""  # file name in RULES_DIR

    @property
    def rules_path(self) -> Path | None:
        return RULES_DIR / self.rules if self.rules else None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "msprobe",
            "msProbe (mindstudio-probe), statistics or tensor task",
            "step{N}/rank{R}/dump.json [+ dump_tensor_data/]",
            MsprobeSource,
            _is_msprobe,
            "msprobe.yaml",
        ),
        Preset(
            "sglang",
            "SGLang dumper (sglang.srt.debug_utils.dumper)",
            "EXP/step=N___rank=R___dump_index=K___name=X.pt  {value, meta}",
            SglangSource,
            _is_sglang,
        ),
        Preset(
            "trtllm",
            "TensorRT-LLM C++ executor debug tensors",
            "tllm_debug/PP_{size}/TP_{size}/iteration_{N}/{tensor}.npy",
            TrtllmNpySource,
            _is_trtllm,
            "trtllm.yaml",
        ),
        Preset(
            "trtllm-torch",
            "TensorRT-LLM PyTorch backend debug_mode",
            "rank{R}/{i}.{Module}-{i}.{Layer}-...-{input|output}.{arg}.pt",
            TrtllmTorchSource,
            _is_trtllm_torch,
            "trtllm_torch.yaml",
        ),
    )
}


def detect(root: Path) -> list[str]:
    """Names of the presets whose layout `root` has."""
    files = _sample(root) if root.is_dir() else [root]
    return [p.name for p in PRESETS.values() if p.detect(root, files)]
