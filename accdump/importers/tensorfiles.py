"""Tensors out of .pt, .npy, .npz and .safetensors files, safely and with their true dtype.

* .pt / .pth: only `torch.load(weights_only=True)`, which rebuilds tensors and plain containers
  and refuses every other class without running its code; such files are refused with
  UnsafeFileError saying how to re-save them. bfloat16 / float8 tensors keep their dtype.
* .npy / .npz: the header is parsed here (no pickle: object arrays are refused), so files whose
  type NumPy lacks still load: TensorRT-LLM writes descr 'x' for bfloat16 / float8 host tensors
  (cpp/tensorrt_llm/runtime/utils/numpyUtils.cpp, getNumpyTypeDesc). `--dtype` reinterprets raw or
  integer values of the same width (uint16 -> bfloat16); floats are never cast.
* .safetensors: read tensor by tensor; its dtypes (BF16, F8_E4M3, ...) map onto torch's.
"""

from __future__ import annotations

import ast
import io
import math
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from accdump.capture.flatten import find_tensors
from accdump.errors import SourceFormatError, UnsafeFileError
from accdump.importers.records import ImportNotes
from accdump.store.dtypes import dtype_name

SUFFIXES = (".pt", ".pth", ".npy", ".npz", ".safetensors")
_NPY_MAGIC = b"\x93NUMPY"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|global ([\w.]+)|Unsupported class ([\w.]+)")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name` (`bfloat16`, `float8_e4m3fn`, ...)."""
    dt = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dt, torch.dtype):
        raise SourceFormatError(f"--dtype {name}: not a torch dtype (e.g. bfloat16, float8_e4m3fn, float16)")
    return dt


def load_pt(path: Path) -> Any:
    """The object in a torch file, loaded with weights_only=True (tensors and plain containers)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        m = _GLOBAL.search(str(exc))
        what = (
            f"{next(g for g in m.groups() if g)}, which is neither a tensor nor a plain container"
            if m
            else "Python objects other than tensors"
        )
        raise UnsafeFileError(
            f"{path}: refused: it needs {what}; loading it would mean full unpickling, which can run "
            "arbitrary code. If you trust the file, re-save its tensors alone: "
            "torch.save(<a tensor, or a dict / list / tuple of tensors>, path)"
        ) from None
    except Exception as exc:  # a truncated or foreign file
        raise SourceFormatError(f"{path}: not a readable torch file: {exc}") from exc


def _npy_header(f: IO[bytes], where: str) -> tuple[str, tuple[int, ...], bool]:
    if f.read(6) != _NPY_MAGIC:
        raise SourceFormatError(f"{where}: not a .npy file (bad magic)")
    major = f.read(2)[0]
    if major == 1:
        (size,) = struct.unpack("<H", f.read(2))
    elif major in (2, 3):
        (size,) = struct.unpack("<I", f.read(4))
    else:
        raise SourceFormatError(f"{where}: .npy format version {major} is not supported")
    try:
        header = ast.literal_eval(f.read(size).decode("utf-8" if major == 3 else "latin1"))
        descr, shape, fortran = (
            header["descr"],
            tuple(int(s) for s in header["shape"]),
            header["fortran_order"],
        )
    except Exception as exc:
        raise SourceFormatError(f"{where}: unreadable .npy header: {exc}") from None
    if not isinstance(descr, str):
        raise SourceFormatError(f"{where}: holds a structured array (fields {descr!r}), not a tensor")
    return descr, shape, bool(fortran)


def read_npy(f: IO[bytes], where: str, override: torch.dtype | None, notes: ImportNotes) -> torch.Tensor:
    """A tensor from an open .npy stream; raw types (descr 'x', void) need `override`."""
    descr, shape, fortran = _npy_header(f, where)
    if "O" in descr:
        raise UnsafeFileError(
            f"{where}: refused: an object array (descr {descr!r}) can only be read by unpickling, which "
            "can run arbitrary code; save numeric arrays instead"
        )
    data = bytearray(f.read())
    n = math.prod(shape)
    try:
        npdt: np.dtype | None = np.dtype(descr)
    except TypeError:
        npdt = None
    if npdt is None or npdt.kind == "V":
        width = len(data) // n if n else 0
        if override is None:
            raise SourceFormatError(
                f"{where}: holds raw {width}-byte values of a type NumPy lacks (descr {descr!r}; "
                "TensorRT-LLM writes bfloat16 / float8 host tensors so): pass --dtype "
                "(bfloat16, float8_e4m3fn, ...) to say what they are"
            )
        if n and width != override.itemsize:
            raise SourceFormatError(
                f"{where}: holds {width}-byte values, but --dtype {dtype_name(override)} has "
                f"{override.itemsize}-byte ones"
            )
        notes.dtype(f"raw {descr!r} (.npy)", dtype_name(override), "reinterpreted bits (--dtype)")
        return _from_bytes(data, override, shape, fortran, where)
    if npdt.byteorder == ">" or (npdt.byteorder == "=" and not np.little_endian):
        arr = np.frombuffer(data, dtype=npdt, count=n).astype(npdt.newbyteorder("="))
        data, npdt = bytearray(arr.tobytes()), arr.dtype
    try:
        tdt = torch.from_numpy(np.zeros(0, dtype=npdt)).dtype
    except TypeError:
        raise SourceFormatError(f"{where}: NumPy type {npdt} has no torch equivalent") from None
    t = _from_bytes(data, tdt, shape, fortran, where)
    return settle_dtype(t, f"{dtype_name(tdt)} (.npy)", override, notes)


def _from_bytes(
    data: bytearray, dtype: torch.dtype, shape: tuple[int, ...], fortran: bool, where: str
) -> torch.Tensor:
    n = math.prod(shape)
    if len(data) < n * dtype.itemsize:
        raise SourceFormatError(f"{where}: truncated: {len(data)} bytes for {n} values of {dtype}")
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(data, dtype=torch.uint8, count=n * dtype.itemsize).view(dtype)
    if fortran:  # column-major: the transposed shape, transposed back (strides say how it was)
        return flat.reshape(shape[::-1]).permute(*reversed(range(len(shape))))
    return flat.reshape(shape)


def settle_dtype(
    t: torch.Tensor, found: str, override: torch.dtype | None, notes: ImportNotes
) -> torch.Tensor:
    """`t` as `override` when it holds raw or integer values of the same width, else unchanged."""
    if override is None or t.dtype == override:
        notes.dtype(found, dtype_name(t.dtype), "as stored")
        return t
    raw = not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)
    if raw and t.element_size() == override.itemsize:
        notes.dtype(found, dtype_name(override), "reinterpreted bits (--dtype)")
        return t.view(override)
    notes.dtype(
        found, dtype_name(t.dtype), f"kept: --dtype reinterprets only raw {override.itemsize}-byte values"
    )
    return t


def _tensor_items(obj: Any, where: str) -> list[tuple[str, torch.Tensor]]:
    found = [(k, t.detach()) for k, t in find_tensors(obj)]
    if not found:
        raise SourceFormatError(f"{where}: holds no tensor (a {type(obj).__name__})")
    return found


def load_tensors(
    path: Path, override: torch.dtype | None, notes: ImportNotes
) -> list[tuple[str, torch.Tensor]]:
    """(key, tensor) of every tensor in a file: key '0' for a lone tensor, positions or names for a
    tuple / list / dict (nested as '0.1'), the array names of an .npz, the keys of a safetensors file."""
    suffix = path.suffix.lower()
    where = str(path)
    if suffix in (".pt", ".pth"):
        items = _tensor_items(load_pt(path), where)
        return [(k, settle_dtype(t, f"{dtype_name(t.dtype)} (torch)", override, notes)) for k, t in items]
    if suffix == ".npy":
        with open(path, "rb") as f:
            return [("0", read_npy(f, where, override, notes))]
    if suffix == ".npz":
        return _load_npz(path, override, notes)
    if suffix == ".safetensors":
        return _load_safetensors(path, override, notes)
    raise SourceFormatError(f"{where}: not a tensor file (expected one of {', '.join(SUFFIXES)})")


def _load_npz(path: Path, override: torch.dtype | None, notes: ImportNotes) -> list[tuple[str, torch.Tensor]]:
    out = []
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                key = member.removesuffix(".npy")
                key = key[4:] if re.fullmatch(r"arr_\d+", key) else key  # np.savez(*arrays) names
                with z.open(member) as f:
                    out.append((key, read_npy(io.BytesIO(f.read()), f"{path}:{member}", override, notes)))
    except zipfile.BadZipFile as exc:
        raise SourceFormatError(f"{path}: not a readable .npz file: {exc}") from None
    if not out:
        raise SourceFormatError(f"{path}: holds no array")
    return out


def _load_safetensors(
    path: Path, override: torch.dtype | None, notes: ImportNotes
) -> list[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            items = [(k, f.get_tensor(k)) for k in f.keys()]
    except Exception as exc:
        raise SourceFormatError(f"{path}: not a readable safetensors file: {exc}") from None
    if not items:
        raise SourceFormatError(f"{path}: holds no tensor")
    return [(k, settle_dtype(t, f"{dtype_name(t.dtype)} (safetensors)", override, notes)) for k, t in items]
