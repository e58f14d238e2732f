"""Shared test configuration: every async test runs on asyncio through anyio's plugin."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


from redis_fixture import redis_server  # noqa: E402,F401  (a real redis-server per test)
