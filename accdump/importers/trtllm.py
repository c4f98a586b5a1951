"""TensorRT-LLM's two tensor dumps.

`trtllm` — the C++ executor's debug tensors (DebugConfig), as read in NVIDIA/TensorRT-LLM
cpp/tensorrt_llm/batch_manager/utils/debugUtils.cpp (getOutputPath, dumpTensor): one
`{name}.npy` per tensor in `$TMPDIR/tllm_debug/PP_{pp}/TP_{tp}/iteration_{n}/`, where PP / TP are
the pipeline- and tensor-parallel *sizes*, not ranks, so every rank of a node writes the same
folder: import one rank's run at a time (--rank says which rank it was, default 0). The names
are the engine's tensor names (plus `request_ids`); no file says a tensor's role or order, so
records are outputs, in module-path order unless --order-like gives the reference run's.
saveNpy (cpp/tensorrt_llm/runtime/utils/numpyUtils.cpp) converts bfloat16 GPU tensors to
float32 before writing and writes descr 'x' for types NumPy lacks (bfloat16 / float8 on the
host): those need --dtype.

`trtllm-torch` — the PyTorch backend's `debug_mode(model, dest_folder)`, as read in
tensorrt_llm/_torch/debug/debug_hook.py: hooks on every module except the root write
`{dest}/rank{R}/{i0}.{N0}-{i1}.{N1}-...-{input|output}.{arg}.pt`, one tensor per file. N is the
module's `name` attribute or its class name; i0 counts the root's child calls over the whole run
(1, 2, ...), deeper i count the calls under the parent call. Before forward the positional
tensors are saved as `input.{arg}`, arg being the forward parameter's name by tensor counter
(keyword arguments are not saved); after forward the same arguments are saved again as
`output.{arg}`, then the outputs, whose counter continues (so named after later parameters, or
numbered). Mapping: a file is an input when `input.*`, an output when its `output.*` name is not
one of the call's input names; inputs and outputs are numbered by counter (digits) or by file
time. Steps are the repeats of the sequence of root-child calls (--calls-per-step overrides);
a call is named `{N0}.{j0}.{N1}.{j1}...`, j counting same-named siblings from 0, e.g.
`LlamaModel.0.LlamaDecoderLayer.3.LlamaAttention.0.Linear.1`: see the shipped rename rules.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from accdump.errors import SourceFormatError
from accdump.importers.records import ForeignRecord, natural_key, relative, tree_order_key
from accdump.importers.source import NO_ORDER, ImportSource, Progress, SourceOptions
from accdump.importers.tensorfiles import load_tensors
from accdump.store.schema import Role

_ITER = re.compile(r"PP_(\d+)/TP_(\d+)/iteration_(\d+)")
_TORCH_FILE = re.compile(r"(?P<path>\d+\.[^-]+(?:-\d+\.[^-]+)*)-(?P<io>input|output)\.(?P<arg>.+)\.pt")
_RANK = re.compile(r"rank(\d+)")


class TrtllmNpySource(ImportSource):
    name = "trtllm"
    ordered = False

    def __init__(self, root: Path, opts: SourceOptions):
        super().__init__(root, opts)
        runs: set[tuple[int, int]] = set()
        self.files: list[tuple[int, str, Path]] = []  # (iteration, tensor name, file)
        for path in self.walk():
            it = path.absolute().parent
            m = _ITER.fullmatch(f"{it.parent.parent.name}/{it.parent.name}/{it.name}")
            if m is None or path.suffix != ".npy":
                self.notes.unmatched.append(relative(path, root))
                continue
            runs.add((int(m.group(1)), int(m.group(2))))
            self.files.append((int(m.group(3)), path.stem, path))
        if not self.files:
            raise SourceFormatError(
                f"{root}: no TensorRT-LLM debug tensors (tllm_debug/PP_*/TP_*/iteration_*/*.npy)"
            )
        if len(runs) > 1:
            shown = ", ".join(f"PP_{p}/TP_{t}" for p, t in sorted(runs))
            raise SourceFormatError(
                f"{root}: holds several runs ({shown}): point the import at one PP_*/TP_* folder"
            )
        self.check_strict()
        self.import_rank = self.rank or 0
        self.world_size = self.import_rank + 1
        self.files.sort(key=lambda f: (f[0], tree_order_key(f[1], Role.OUTPUT, "0")))
        self.units = len(self.files)
        pp, tp = next(iter(runs))
        self.notes.note(
            f"TensorRT-LLM names its folders by parallel sizes (PP_{pp}/TP_{tp}), not ranks: "
            f"imported as rank {self.import_rank}"
        )
        self.notes.note(NO_ORDER.format(tool="TensorRT-LLM's debug tensor folder"))
        self.notes.note("TensorRT-LLM saves bfloat16 GPU tensors as float32 .npy: float32 is what was stored")

    def reorder(self, position: Callable[[str, Role], float], origin: str = "--order-like") -> None:
        self.files.sort(
            key=lambda f: (f[0], position(f[1], Role.OUTPUT), tree_order_key(f[1], Role.OUTPUT, "0"))
        )
        self.notes.notes = [n for n in self.notes.notes if "--order-like" not in n]
        self.notes.note(f"execution order taken from {origin}")

    def records(self, progress: Progress | None = None) -> Iterator[ForeignRecord]:
        for i, (step, name, path) in enumerate(self.files):
            for k, t in load_tensors(path, self.dtype, self.notes):
                yield ForeignRecord(
                    self.import_rank, step, name, 0, Role.OUTPUT, k, tensor=t, source=str(path)
                )
            if progress is not None:
                progress(i + 1, self.units)


@dataclass
class _Call:
    path: tuple[tuple[int, str], ...]  # (i, N) per level
    inputs: list[tuple[str, Path]]
    outputs: list[tuple[str, Path]]


def steps_of(top: list[str], calls_per_step: int | None) -> int:
    """Root-child calls per step: the shortest period of their name sequence (or as given)."""
    if calls_per_step:
        return calls_per_step
    for p in range(1, len(top) + 1):
        if all(top[i] == top[i - p] for i in range(p, len(top))):
            return p
    return max(1, len(top))


def _args(files: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Files of one side of a call in counter order: numbered ones by number, named ones by file
    time (the hook writes them in counter order), then name."""
    return sorted(
        files,
        key=lambda f: (0, int(f[0]), 0, "") if f[0].isdigit() else (1, 0, f[1].stat().st_mtime_ns, f[0]),
    )


class TrtllmTorchSource(ImportSource):
    name = "trtllm-torch"

    def __init__(
        self,
        root: Path,
        opts: SourceOptions,
        calls_per_step: int | None = None,
    ):
        super().__init__(root, opts)
        by_rank: dict[int, dict[tuple[tuple[int, str], ...], _Call]] = defaultdict(dict)
        rank_dirs = (
            [root]
            if _RANK.fullmatch(root.name)
            else sorted(root.glob("rank*"), key=lambda p: natural_key(p.name))
        )
        for d in rank_dirs:
            m = _RANK.fullmatch(d.name)
            if m is None or not d.is_dir() or not self.wants_rank(int(m.group(1))):
                continue
            for path in self.walk(d):
                fm = _TORCH_FILE.fullmatch(path.name)
                if fm is None or path.parent != d:
                    self.notes.unmatched.append(relative(path, root))
                    continue
                levels = tuple(
                    (int(i), n) for i, n in (seg.split(".", 1) for seg in fm.group("path").split("-"))
                )
                call = by_rank[int(m.group(1))].setdefault(levels, _Call(levels, [], []))
                (call.inputs if fm.group("io") == "input" else call.outputs).append((fm.group("arg"), path))
        if not by_rank:
            raise SourceFormatError(
                f"{root}: no TensorRT-LLM debug_mode files (rank*/1.Model-1.Layer-input.x.pt)"
            )
        self.check_strict()
        self.world_size = max(by_rank) + 1
        self.entries: list[tuple[int, int, tuple[int, ...], ForeignRecord]] = []
        for r, calls in sorted(by_rank.items()):
            self._plan(r, list(calls.values()), calls_per_step)
        self.entries.sort(key=lambda e: (e[0], e[1], e[2]))
        self.units = len(self.entries)

    def _plan(self, rank: int, calls: list[_Call], calls_per_step: int | None) -> None:
        top_ids = sorted({c.path[0][0] for c in calls})
        top_names = {c.path[0][0]: c.path[0][1] for c in calls}
        period = steps_of([top_names[i] for i in top_ids], calls_per_step)
        steps = -(-len(top_ids) // period)
        self.notes.note(
            f"rank {rank}: {len(top_ids)} calls of the root's children, {period} per step: {steps} step(s)"
        )
        position = {i: n for n, i in enumerate(top_ids)}
        # j: the ordinal among same-named siblings under the same parent call
        siblings: dict[tuple[object, ...], list[tuple[int, str]]] = defaultdict(list)
        for c in calls:
            for depth in range(len(c.path)):
                parent: tuple[object, ...] = c.path[:depth]
                if depth == 0:
                    parent = (position[c.path[0][0]] // period,)
                if c.path[depth] not in siblings[parent]:
                    siblings[parent].append(c.path[depth])
        ordinal: dict[tuple[object, ...], int] = {}
        for parent, items in siblings.items():
            counts: dict[str, int] = defaultdict(int)
            for i, n in sorted(items):
                ordinal[(*parent, (i, n))] = counts[n]
                counts[n] += 1
        for c in calls:
            step = position[c.path[0][0]] // period
            parts = []
            for depth, (i, n) in enumerate(c.path):
                parent = (step,) if depth == 0 else c.path[:depth]
                parts.append(f"{n}.{ordinal[(*parent, (i, n))]}")
            name, kind = ".".join(parts), c.path[-1][1]
            indices = tuple(i for i, _ in c.path)
            inputs = _args(c.inputs)
            in_names = {a for a, _ in c.inputs}
            outputs = _args([o for o in c.outputs if o[0] not in in_names])
            for role, files, phase in ((Role.INPUT, inputs, 0), (Role.OUTPUT, outputs, 1 << 40)):
                for j, (_, path) in enumerate(files):
                    rec = ForeignRecord(rank, step, name, 0, role, str(j), kind=kind, source=str(path))
                    self.entries.append((rank, step, (*indices, phase, j), rec))

    def records(self, progress: Progress | None = None) -> Iterator[ForeignRecord]:
        for n, (_, _, _, spec) in enumerate(self.entries):
            items = load_tensors(Path(spec.source), self.dtype, self.notes)
            for k, t in items:
                arg = spec.arg if len(items) == 1 else f"{spec.arg}.{k}"
                yield ForeignRecord(
                    spec.rank,
                    spec.step,
                    spec.name,
                    0,
                    spec.role,
                    arg,
                    tensor=t,
                    kind=spec.kind,
                    source=spec.source,
                )
            if progress is not None:
                progress(n + 1, self.units)
