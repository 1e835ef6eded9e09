"""A disposable real ``redis-server`` process that a test may stop and start again."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from receiver.embedded import redis_server_binary
from tests.conftest import free_port, wait_for_port


class RedisProcess:
    """redis-server on a free TCP port, data under ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        # More redis-server options, e.g. ("--maxmemory-policy", "allkeys-lru").
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                self.appendfsync,
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a frozen server cannot act on SIGTERM
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL: Redis alone crashes, keeping only what its AOF already holds."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung host, a long fork)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    import socket

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterProcesses:
    """A real three-primary Redis Cluster on free ports (no replicas), for cluster tests."""

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        self.nodes = [RedisProcess(directory / f"node{n}") for n in range(nodes)]
        for node in self.nodes:
            node.port = cluster_port()

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisClusterProcesses:
        try:
            return self._start()
        except BaseException:
            self.stop()  # no node outlives a failed start
            raise

    def _start(self) -> RedisClusterProcesses:
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            node.process = subprocess.Popen(
                [redis_server_binary(), "--port", str(node.port), "--bind", "127.0.0.1",
                 "--dir", str(node.directory), "--save", "", "--appendonly", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "2000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        for node in self.nodes:
            wait_for_port(node.port)
        cli = Path(redis_server_binary()).with_name("redis-cli")
        subprocess.run(
            [str(cli), "--cluster", "create",
             *(f"127.0.0.1:{node.port}" for node in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self._wait_until_ok()
        return self

    def _wait_until_ok(self) -> None:
        import time

        import redis

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = redis.Redis(port=self.nodes[0].port).cluster("info")
            state = info.get("cluster_state") if isinstance(info, dict) else None
            if state in ("ok", b"ok"):
                return
            time.sleep(0.1)
        raise TimeoutError("Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
