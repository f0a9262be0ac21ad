"""HTTP clients on the servers of tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.support.servers import ImsServer


@pytest.fixture(scope="session")
def api(ims_server: ImsServer) -> Iterator[httpx.Client]:
    """A client of the session's shared server: create records of your own, never assume an empty list."""
    with httpx.Client(base_url=ims_server.url, timeout=30) as client:
        yield client


@pytest.fixture
def fresh_api(fresh_ims_server: ImsServer) -> Iterator[httpx.Client]:
    """A client of a server with an empty database, for collection-wide operations."""
    with httpx.Client(base_url=fresh_ims_server.url, timeout=30) as client:
        yield client
