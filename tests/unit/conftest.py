"""Fixtures shared by the unit tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:  # the shared test helpers live in the top-level ``tests`` package
    sys.path.insert(0, REPO)

from tests.fake_connector import FakeConnector, register  # noqa: E402


@pytest.fixture
def fake_connector(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeConnector]]:
    """The ``@fake`` connector, registered for this test with an empty log; yields ``FakeConnector``."""
    connector = register(monkeypatch)
    yield connector
    connector.reset()

