"""Fixtures of the reliability tests: one pre-imported zygote per session to fork children from."""

from __future__ import annotations

import pytest

from tests.reliability._zygote import Zygote


@pytest.fixture(scope="session")
def zygote():
    z = Zygote()
    yield z
    z.close()
