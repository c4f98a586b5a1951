"""fletcher32 (the checksum of dump heap chunks): native against its NumPy reference twin on random
data of every length class, and the op's registration (schema, fake kernel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accdump import ops, reference

pytestmark = pytest.mark.skipif(not ops.native_available("cpu"), reason=ops.backend_reason())


@pytest.mark.parametrize("size", [1, 2, 719, 720, 721, 65_537, 1 << 20])
def test_native_equals_reference(size):
    data = torch.from_numpy(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    assert int(torch.ops.accdump.fletcher32.default(data)) == reference.fletcher32(data)


def test_opcheck():
    data = torch.from_numpy(np.random.default_rng(3).integers(0, 256, 4099, dtype=np.uint8))
    torch.library.opcheck(
        torch.ops.accdump.fletcher32.default,
        (data,),
        test_utils=("test_schema", "test_autograd_registration"),
    )


def test_fake_kernel_says_it_cannot_trace():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match="cannot run on fake tensors"):
        torch.ops.accdump.fletcher32.default(mode.from_tensor(torch.zeros(9, dtype=torch.uint8)))


def test_reference_rejects_what_the_native_op_rejects():
    with pytest.raises(ValueError, match="contiguous 1-D uint8"):
        reference.fletcher32(torch.zeros(4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="contiguous 1-D uint8"):
        torch.ops.accdump.fletcher32.default(torch.zeros(8, dtype=torch.uint8)[::2])
