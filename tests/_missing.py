"""What a test does when a program or library it needs is missing."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """
    Skip the test with *reason* on a developer's machine; fail it when ``CI``
    is set, where every peer must be present.
    """
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
