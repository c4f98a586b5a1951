"""Foreign dumps compared directly: `accdump compare GOLDEN SRC --target-format P` imports SRC
into a temporary accdump dump (or one kept under --import-dir), compares, and removes it.

    with compared_sides(golden, src, Foreign(), Foreign(format="auto")) as (g, t):
        result = accdump.compare(g.path, t.path)

A side read in a format that records no execution order (TensorRT-LLM's .npy tree, a pattern
folder) takes the other side's, as `accdump import --order-like` would: compare reports the first
failing record in the target's order.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from accdump.errors import DumpExistsError, DumpFormatError, SourceFormatError
from accdump.importers import ImportResult, open_source, order_of, write_source
from accdump.importers.presets import Preset, detect
from accdump.importers.source import ImportSource
from accdump.store.schema import SEGMENT_GLOB

AUTO = "auto"
SideProgress = Callable[[str, int, int], None]  # (what, units done, units in all)


@dataclass(frozen=True)
class Foreign:
    """How to read one side that is not an accdump dump: `accdump import`'s --preset (or "auto"),
    --pattern, --rank and --dtype. Nothing given: the side is an accdump dump."""

    format: str | None = None
    pattern: str | None = None
    rank: int | None = None
    dtype: str | None = None


@dataclass
class Side:
    """One side of the comparison: the accdump dump compare reads and the path reports name."""

    path: Path
    shown: str  # the path the user gave, never the temporary dump
    imported: ImportResult | None = None
    kept: bool = False  # the imported dump stays (under --import-dir)


def _rank_dirs(path: Path) -> list[Path]:
    """The rankNNN folders that make load() take `path` as an accdump dump."""
    if not path.is_dir():
        return []
    return [d for d in path.glob("rank*") if d.is_dir() and re.fullmatch(r"rank\d+", d.name)]


def is_dump(path: Path) -> bool:
    """Whether `path` holds an accdump recording: rank folders with segments (msProbe's step
    folders hold rank0/ too, without segments)."""
    return any(any(d.glob(SEGMENT_GLOB)) for d in _rank_dirs(path))


def _check(role: str, how: Foreign) -> None:
    if how.format is not None and how.pattern is not None:
        raise SourceFormatError(f"give either --{role}-format or --{role}-pattern, not both")
    if how.format is None and how.pattern is None:
        for option, value in (("rank", how.rank), ("dtype", how.dtype)):
            if value is not None:
                raise SourceFormatError(
                    f"--{role}-{option} reads a foreign {role.upper()}: add --{role}-format "
                    f"(a preset or {AUTO}) or --{role}-pattern"
                )


def _needs_import(role: str, path: Path, how: Foreign) -> bool:
    """Whether the side must be imported. Without a format the side is read as an accdump dump, as
    compare always did; a folder in a layout import knows is refused naming the option to add."""
    if how.pattern is not None or (how.format is not None and how.format != AUTO):
        return True
    if how.format == AUTO:
        return not is_dump(path)
    if path.is_dir() and not _rank_dirs(path):  # load() would only say "not an accdump dump"
        found = detect(path)
        if len(found) == 1:
            raise DumpFormatError(
                f"{path} is not an accdump dump but looks like {found[0]} output: add "
                f"--{role}-format {found[0]} (or {AUTO}) to import it on the fly"
            )
    return False


def _open(src: Path, how: Foreign, out: Path) -> tuple[ImportSource, Preset | None]:
    return open_source(
        src,
        preset=None if how.format in (None, AUTO) else how.format,
        pattern=how.pattern,
        rank=how.rank,
        dtype=how.dtype,
        exclude=out,
    )


def _output(import_dir: Path, role: str) -> Path:
    out = import_dir / role
    if any(d.is_dir() and any(d.glob(SEGMENT_GLOB)) for d in out.glob("rank*")):
        raise DumpExistsError(
            f"--import-dir: {out} already holds a recording; compare with it directly "
            f"(accdump compare ... {out}), remove it, or choose another --import-dir"
        )
    return out


@contextmanager
def compared_sides(
    golden: str | os.PathLike[str],
    target: str | os.PathLike[str],
    golden_as: Foreign,
    target_as: Foreign,
    *,
    import_dir: str | os.PathLike[str] | None = None,
    rename: str | os.PathLike[str] | None = None,
    progress: SideProgress | None = None,
) -> Iterator[tuple[Side, Side]]:
    """The golden and target sides as accdump dumps: foreign ones imported into `import_dir`/golden
    and /target (kept), or into a temporary folder removed on exit. `rename`: compare's --rename,
    matching the target's names to the golden's for taking its execution order."""
    paths = {"golden": Path(golden), "target": Path(target)}
    ways = {"golden": golden_as, "target": target_as}
    for role, how in ways.items():
        _check(role, how)
    todo = [role for role in ("golden", "target") if _needs_import(role, paths[role], ways[role])]
    sides = {role: Side(path, str(path)) for role, path in paths.items()}
    with ExitStack() as stack:
        if todo:
            keep = import_dir is not None
            if import_dir is not None:
                base = Path(import_dir)
            else:
                base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="accdump-compare-")))
            outs = {role: _output(base, role) for role in todo}
            # every source scanned (layout errors shown) before anything is written
            opened = {role: _open(paths[role], ways[role], outs[role]) for role in todo}
            for role in todo:  # golden first, so that a target without execution order can take its
                source, chosen = opened[role]
                other = "target" if role == "golden" else "golden"
                if not source.ordered and (other not in todo or sides[other].imported is not None):
                    rules = rename if role == "target" else None  # --rename maps target names
                    origin = f"the {other} {sides[other].shown}"
                    source.reorder(order_of(sides[other].path, rules, chosen), origin=origin)
                report = None if progress is None else partial(progress, f"importing {role}")
                result = write_source(source, chosen, paths[role], outs[role], progress=report)
                sides[role] = Side(outs[role], str(paths[role]), result, keep)
        yield sides["golden"], sides["target"]
