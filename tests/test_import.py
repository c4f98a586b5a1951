"""Importing accdump is lean and never fails because of the extension."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from accdump import ops


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def test_native_built_when_required():
    # `make test` sets ACCDUMP_REQUIRE_NATIVE=1: there the extension must have been built and loaded.
    if os.environ.get("ACCDUMP_REQUIRE_NATIVE") != "1":
        pytest.skip("ACCDUMP_REQUIRE_NATIVE is not set")
    assert ops.native_available("cpu"), ops.backend_reason()


def test_import_does_not_initialise_cuda_or_warn():
    r = run_python(
        "import warnings; warnings.simplefilter('error'); import accdump, accdump.ops, torch; "
        "print(torch.cuda.is_initialized())"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    assert r.stderr == ""


def test_disabled_native_falls_back_to_reference():
    code = (
        "import torch; from accdump import ops; "
        "print(ops.native_available('cpu')); print(ops.backend_reason()); "
        "print(ops.tensor_stats(torch.arange(5.)).mean)"
    )
    r = run_python(code, ACCDUMP_DISABLE_NATIVE="1")
    assert r.returncode == 0, r.stderr
    avail, reason, mean = r.stdout.strip().splitlines()
    assert avail == "False" and "ACCDUMP_DISABLE_NATIVE" in reason and float(mean) == 2.0


def test_explicit_native_request_names_the_reason():
    code = (
        "import torch; from accdump import ops\n"
        "try:\n    ops.tensor_stats(torch.ones(2), backend='native')\n"
        "except Exception as e:\n    print(type(e).__name__, e)"
    )
    r = run_python(code, ACCDUMP_DISABLE_NATIVE="1")
    assert "NativeUnavailableError" in r.stdout and "ACCDUMP_DISABLE_NATIVE" in r.stdout
