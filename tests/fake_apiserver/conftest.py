"""Fixtures: a started fake API server (stopped afterwards) and a kubeconfig for it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.fake_apiserver.server import FakeApiServer


@pytest.fixture
def fake_apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer(bookmark_interval=60.0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(fake_apiserver: FakeApiServer, tmp_path: Path) -> Path:
    return fake_apiserver.write_kubeconfig(tmp_path / "kubeconfig")
