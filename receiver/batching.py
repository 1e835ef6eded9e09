"""Pipeline the Redis commands of concurrent requests onto one shared connection.

With stock redis-py every request pays its own round trip and connection checkout, and
the client library costs more CPU than the rest of the request (see the performance
issue's probe: ~285 µs per command against ~80 µs pipelined). Here each command joins the
batch of the current event-loop tick, and the batch is written at once.

On a single server the batches go down one dedicated connection without waiting for the
previous batch's answers: one reader task takes the replies in order and hands each
caller its own result or error. A long batch goes out every ``FLUSH_AT`` commands, so
Redis works on its first commands while the tick issues the rest. Commands are packed by
hiredis (~4 µs against ~27 µs for redis-py's pure-Python packer) and replies are read
without redis-py's pipeline layers (retry wrapper, response callbacks, a timeout context
per reply). On Redis Cluster the batch goes through redis-py's cluster pipeline, which
routes each command to its node.

Commands stay independent: one failing does not fail the others. A lost connection fails
the commands waiting on it with a Redis ``ConnectionError``, whatever the transport raised
(uvloop raises ``RuntimeError`` for a write on a transport it has just closed after a
reset), and the next batch connects again. A server that stops answering fails them after
the client's socket timeout (``RECEIVER_REDIS_TIMEOUT``), like any other Redis call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import hiredis
from redis._parsers import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from receiver.redis_client import REDIS_ERRORS, is_cluster

# A batch this long is written at once, not at the end of the tick. Under load one tick
# runs dozens of request handlers; had their commands waited for the last one, Redis would
# idle meanwhile and then the handlers would all idle for Redis. Measured with the bench
# (interleaved saturation runs): 16 gave 0.248-0.255x the floor, waiting for the end of the
# tick 0.213-0.235x; 8 and 4 were no better (more writes for the same overlap).
FLUSH_AT = 16
DEFAULT_TIMEOUT_SECONDS = 2.0
# The watchdog looks this often (at most), so a silent server fails callers within
# about the timeout plus this, not the timeout plus a quarter of it.
WATCH_INTERVAL_SECONDS = 0.25
READ_SIZE = 65536

Batch = list[tuple[Sequence[Any], asyncio.Future[Any]]]


class AutoPipeline:
    """Send commands issued in the same loop tick as one pipeline."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._pending: Batch = []
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._channel = None if is_cluster(client) else SharedConnection(client.connection_pool)

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """The reply to ``args`` (await it); the command goes out with this tick's batch.

        A plain function returning the future, not a coroutine: one layer less per command.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((args, future))
        if len(self._pending) >= FLUSH_AT:
            self._send_pending()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        self._send_pending()

    def _send_pending(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._channel is not None:
            self._channel.send(batch)
            return
        task = asyncio.get_running_loop().create_task(self._send_clustered(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _send_clustered(self, batch: Batch) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for args, _ in batch:
                pipe.execute_command(*args)
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every caller gets the error
            _fail([future for _, future in batch], exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            _resolve(future, result)

    async def load_script(self, source: str) -> None:
        """SCRIPT LOAD on the connection the script runs on (on every node of a cluster)."""
        if self._channel is None:
            await self._client.script_load(source)
        else:
            await self.execute("SCRIPT", "LOAD", source)

    async def aclose(self) -> None:
        """Wait for batches already sent (graceful shutdown), then close the connection."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._channel is not None:
            await self._channel.aclose()


class SharedConnection:
    """One connection to a single Redis server, written in batches, read by one task.

    redis-py opens the connection (TLS, AUTH, SELECT and the rest of the handshake) and
    takes it back when it fails; while held here, batches are written to its stream at
    once (no task or lock per batch) and one task feeds everything the server sends to a
    hiredis reader. Replies come back in the order the commands were written, so the
    futures of the commands in flight wait in one FIFO queue; the reader pops one per reply.
    """

    def __init__(self, pool: Any) -> None:
        # The connection comes from the client's pool, so closing the client closes it too.
        self._pool = pool
        kwargs = pool.connection_kwargs
        self._timeout = kwargs.get("socket_timeout") or DEFAULT_TIMEOUT_SECONDS
        self._watch_interval = min(self._timeout / 4, WATCH_INTERVAL_SECONDS)
        self._encoding = kwargs.get("encoding", "utf-8") if kwargs.get("decode_responses") else None
        self._encoding_errors = kwargs.get("encoding_errors", "strict")
        self._connection: Any = None
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        # Batches written, waiting for their replies; batches waiting for a connection.
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._unsent: list[tuple[bytes, list[asyncio.Future[Any]]]] = []
        self._last_progress = 0.0

    def send(self, batch: Batch) -> None:
        """Write ``batch`` now, or as soon as the connection is open."""
        futures = [future for _, future in batch]
        try:
            data = b"".join([hiredis.pack_command(tuple(args)) for args, _ in batch])
        except (TypeError, ValueError) as exc:  # an argument Redis cannot take: a bug
            _fail(futures, exc)
            return
        if self._writer is not None and self._writer.transport.is_closing():
            # The event loop saw the connection fail (a reset) before our reader did: what
            # waits on it fails, and this batch, not yet written, goes to the next one.
            self._drop(RedisConnectionError("Redis connection lost"))
        if self._writer is not None:
            self._write(data, futures)
            return
        self._unsent.append((data, futures))
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def _write(self, data: bytes, futures: list[asyncio.Future[Any]]) -> None:
        assert self._writer is not None
        if not self._waiting:
            self._last_progress = asyncio.get_running_loop().time()
        self._waiting.extend(futures)
        try:
            # A write to a connection the server closed mostly fails later, in the reader,
            # with the rest; a transport that already knows it is gone raises here instead.
            self._writer.write(data)
        except Exception as exc:  # RuntimeError (uvloop: closed handle), OSError
            self._drop(_connection_error(exc))

    async def _connect(self) -> None:
        try:
            connection = await self._pool.get_connection()
        except BaseException as exc:
            unsent, self._unsent = self._unsent, []
            for _, futures in unsent:
                _fail(futures, _connection_error(exc))
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._connecting = None
        # redis-py's own stream pair, past the handshake; nothing else reads or writes it
        # while the connection is held here (tests/test_batching.py guards this contract).
        self._connection = connection
        self._writer = connection._writer
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read(connection, connection._reader))
        self._watchdog = loop.call_later(self._watch_interval, self._watch)
        unsent, self._unsent = self._unsent, []
        for data, futures in unsent:
            self._write(data, futures)

    async def _read(self, connection: Any, stream: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        reader = hiredis.Reader(
            protocolError=InvalidResponse,
            replyError=BaseParser.parse_error,  # NOSCRIPT -> NoScriptError, as redis-py does
            encoding=self._encoding,
            errors=self._encoding_errors,
        )
        waiting = self._waiting
        try:
            while True:
                data = await stream.read(READ_SIZE)
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                self._last_progress = loop.time()
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    _resolve(waiting.popleft(), reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # OSError, or a reply nobody asked for (IndexError)
            self._drop(_connection_error(exc), connection)

    def _watch(self) -> None:
        """Fail everything in flight when the server has not answered for the timeout."""
        if self._connection is None:
            return
        idle = asyncio.get_running_loop().time() - self._last_progress
        if self._waiting and idle > self._timeout:
            self._drop(RedisTimeoutError(f"no reply from Redis in {self._timeout:g} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(self._watch_interval, self._watch)

    def _drop(self, exc: BaseException, connection: Any = None) -> None:
        """Close the connection (if it is still ``connection``) and fail what waits on it."""
        if self._connection is None:
            return
        if connection is not None and connection is not self._connection:
            return
        dropped, self._connection, self._writer = self._connection, None, None
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self._waiting = self._waiting, collections.deque()
        _fail(waiting, exc)
        task = asyncio.get_running_loop().create_task(self._release(dropped))
        task.add_done_callback(_ignore_result)

    async def _release(self, connection: Any) -> None:
        try:
            await connection.disconnect(nowait=True)
        finally:
            await self._pool.release(connection)

    async def aclose(self) -> None:
        """Let the commands in flight finish (up to the timeout), then give the connection back."""
        if self._connecting is not None:
            with contextlib.suppress(Exception):
                await self._connecting
        if self._waiting:
            await asyncio.wait(list(self._waiting), timeout=self._timeout)
        connection = self._connection
        if connection is None:
            return
        self._drop(RedisConnectionError("the receiver is shutting down"))
        with contextlib.suppress(Exception):
            await self._release(connection)


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():  # the caller gave up (cancelled)
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _fail(futures: Iterable[asyncio.Future[Any]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _connection_error(exc: BaseException) -> Exception:
    """``exc`` as callers can handle it: a Redis error stays, anything else (a transport's
    RuntimeError, a cancelled connect) becomes a ConnectionError: to the caller, Redis is
    unavailable (503), never a bug (500)."""
    if isinstance(exc, REDIS_ERRORS) and not isinstance(exc, OSError):
        return exc
    error = RedisConnectionError(f"Redis connection failed: {exc!r}")
    error.__cause__ = exc
    return error


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Script:
    """A Lua script run by SHA through the auto-pipeline, reloaded if Redis lost it."""

    def __init__(self, pipeline: AutoPipeline, source: str) -> None:
        self._pipeline = pipeline
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def load(self) -> None:
        await self._pipeline.load_script(self.source)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        command = ("EVALSHA", self.sha, str(len(keys)), *keys, *args)
        try:
            return await self._pipeline.execute(*command)
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH ran: load once more and retry this call.
            await self.load()
            return await self._pipeline.execute(*command)
