"""Builds accdump._C against the installed torch (pip install --no-build-isolation).

A CUDA build when torch has CUDA and nvcc is found (or ACCDUMP_CUDA=1), else a CPU build
(or ACCDUMP_CUDA=0). CUDA-only sources have "_cuda" in their name.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = Path(__file__).parent


def want_cuda() -> bool:
    forced = os.environ.get("ACCDUMP_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def nvidia_wheel_includes() -> list[str]:
    """Headers of the nvidia-* wheels (cusparse.h, cublas): torch's CUDA headers include them."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for base in spec.submodule_search_locations:
        found += sorted(glob.glob(os.path.join(base, "cu[0-9]*", "include")))
    return found


def sources(cuda: bool) -> list[str]:
    files = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    if cuda:
        return files + sorted(glob.glob("csrc/**/*.cu", recursive=True))
    return [f for f in files if "_cuda" not in os.path.basename(f)]


def write_build_info(cuda: bool, archs: str) -> None:
    text = (
        '"""Written by setup.py: what accdump._C was built against."""\n\n'
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"CUDA_VERSION = {torch.version.cuda if cuda else None!r}\n"
        f"CUDA_ARCHS = {archs if cuda else None!r}\n"
        f"EXTENSION_KIND = {'cuda' if cuda else 'cpu'!r}\n"
    )
    (ROOT / "accdump" / "_build_info.py").write_text(text)


def extension():
    cuda = want_cuda()
    # the C++ standard is the one torch asks for; no contraction of a * b + c into one rounding,
    # so the CPU kernels' float results do not depend on the architecture (aarch64 fuses by default)
    cxx = ["-O3", "-ffp-contract=off"]
    include_dirs = [str(ROOT / "csrc")]
    if cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        include_dirs += nvidia_wheel_includes()
        print(f"accdump: building the CUDA extension (archs {archs}, CUDA {torch.version.cuda})")
        write_build_info(True, archs)
        return cpp_extension.CUDAExtension(
            "accdump._C",
            sources(True),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        )
    print("accdump: building the CPU-only extension (no CUDA toolkit or CPU-only torch)")
    write_build_info(False, "")
    return cpp_extension.CppExtension(
        "accdump._C", sources(False), include_dirs=include_dirs, extra_compile_args=cxx
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
