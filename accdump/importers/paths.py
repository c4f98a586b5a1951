"""Files of an import source, never outside it: symbolic links and `..` that leave the source
folder are refused, whether found by walking the folder or named inside a foreign dump."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from accdump.errors import SourceFormatError
from accdump.importers.records import ImportNotes, natural_key


def source_root(src: str | os.PathLike[str]) -> Path:
    root = Path(src)
    if not root.exists():
        raise SourceFormatError(f"{root}: no such file or folder")
    return root


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def _is_accdump_rank(d: Path) -> bool:
    """A rank folder of an accdump dump (rankNNNNN with a writer.lock): never part of a source."""
    return re.fullmatch(r"rank\d{5}", d.name) is not None and (d / "writer.lock").exists()


def walk_files(root: Path, notes: ImportNotes, exclude: Path | None = None) -> Iterator[Path]:
    """Regular files under `root` in natural path order, but none under `exclude` (the import's own
    output). Folders reached through symbolic links are not entered; linked files pointing outside
    `root` are listed as skipped. accdump's own dumps are never entered."""
    if root.is_file():
        yield root
        return
    skip = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(
            (d for d in dirnames if (here / d).resolve() != skip and not _is_accdump_rank(here / d)),
            key=natural_key,
        )
        for d in dirnames:
            if (here / d).is_symlink():
                notes.skipped.append((str(here / d), "symbolic link to a folder: not followed"))
        for name in sorted(filenames, key=natural_key):
            p = here / name
            if p.is_symlink() and not _inside(p, root):
                notes.skipped.append((str(p), "symbolic link leading outside the source folder"))
                continue
            if p.is_file():
                yield p


def safe_child(root: Path, rel: str, where: str) -> Path:
    """`root / rel` for a name read from a foreign dump; SourceFormatError if it leaves `root`."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not _inside(root / p, root):
        raise SourceFormatError(f"{where}: file name {rel!r} points outside {root}: refused")
    return root / p
