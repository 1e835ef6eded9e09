"""The one factory that turns a Redis URL into a client, for plain Redis and Redis Cluster.

``redis+cluster://`` / ``rediss+cluster://`` URLs select Redis Cluster; everything else is
a single server (``redis://``, ``rediss://``, ``unix://``).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

RedisClient = aioredis.Redis | RedisCluster
CLUSTER_SUFFIX = "+cluster"

# Every way a Redis call fails for reasons outside our code: an error reply (OOM, READONLY,
# a cluster that cannot route), a lost, reset or refused connection, a timeout (TimeoutError
# is an OSError). Ingest answers 503 for these, the worker waits them out, ops exit 1.
# ``RedisClusterException`` is not a ``RedisError``: forgetting it once cost a 500.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)


# The default of RECEIVER_REDIS_TIMEOUT (see settings.py for why it is below senders' own).
DEFAULT_TIMEOUT_SECONDS = 2.0


def create_client(
    url: str, *, max_connections: int = 64, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> Any:
    """A client with bounded timeouts, so a dead or frozen Redis becomes a fast 503, not a hang.

    ``timeout`` bounds connecting and every reply; the auto-pipeline's watchdog uses it too.
    """
    scheme, _, rest = url.partition("://")
    if scheme.endswith(CLUSTER_SUFFIX):
        return RedisCluster.from_url(
            f"{scheme.removesuffix(CLUSTER_SUFFIX)}://{rest}",
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    return aioredis.Redis.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        # No retries inside redis-py (its default is 10, with backoff): a connect to a
        # frozen Redis would take ten timeouts, not one, before the 503. Every caller has a
        # retry of its own: the sender, the worker's loop, start-up's bounded attempts.
        retry=no_retries(),
    )


def no_retries() -> Retry:
    return Retry(NoBackoff(), 0)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)
