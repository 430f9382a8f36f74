"""Fixtures of the language-server tests; the helpers themselves live in lsp_testing.py."""

from __future__ import annotations

import pytest
from lsp_testing import FakeBackend


@pytest.fixture
def fake_backend():
    fb = FakeBackend()
    yield fb
    fb.close()
