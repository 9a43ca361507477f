# syntax=docker/dockerfile:1
# a3s-gateway container image.
#
#   docker build -t ghcr.io/a3s-lab/gateway:dev .
#   docker run -v $(pwd)/gateway.hcl:/etc/a3s-gateway/gateway.hcl -p 8080:8080 ghcr.io/a3s-lab/gateway:dev
#
# Stage "build" produces the manylinux wheel with `make dist` (the same commands a release runs locally);
# the runtime stage installs only that wheel. Both stages use the same Python: the wheel is CPython-version specific.

FROM python:3.11-slim-bookworm AS build

# gcc + libc headers: the C head scanner, the Cython modules and the mypyc group; patchelf: auditwheel repair.
# (The Python headers ship with the python image.)
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make patchelf \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY . /src
# sdist, the wheel built from that sdist, then auditwheel repair -> dist/a3s_gateway-*-manylinux*.whl
RUN --mount=type=cache,target=/root/.cache/pip \
    make dist PYTHON=python3


FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="a3s-gateway" \
      org.opencontainers.image.description="The traffic layer for AI-native services: an HCL-configured reverse proxy" \
      org.opencontainers.image.source="https://github.com/a3s-lab/gateway" \
      org.opencontainers.image.licenses="Apache-2.0"

# XDG_CACHE_HOME: where the HCL grammar tables are cached when the packaged ones do not match the installed
# python-hcl2/lark; under /tmp so that a read-only root filesystem only needs one writable volume (/tmp), which
# TLS set-up uses too.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    XDG_CACHE_HOME=/tmp/cache

# The wheel is read straight from the build stage (no copy of it stays in a layer). The grammar tables are then
# built for the exact python-hcl2/lark versions pip resolved, so the first start does not pay for them.
RUN --mount=type=bind,from=build,source=/src/dist,target=/tmp/dist \
    python -m pip install --no-cache-dir /tmp/dist/a3s_gateway-*manylinux*.whl \
 && python -m a3s_gateway.config.grammar > /dev/null \
 && a3s-gateway version \
 && groupadd --system --gid 10001 a3s \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin a3s \
 && mkdir -p /etc/a3s-gateway

USER 10001:10001
# relative paths in the configuration (certificates, provider directories) resolve next to it
WORKDIR /etc/a3s-gateway

# 8080: the "web" entrypoint of a typical configuration; 9901: the admin API (health, metrics), which listens on
# 127.0.0.1 unless started with --admin 0.0.0.0:9901.
EXPOSE 8080 9901

# The slim image has no curl. An admin API moved elsewhere or turned off: docker run --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/api/gateway/health', timeout=2)"]

# Exec form: the gateway is PID 1 and receives SIGTERM itself (graceful drain, shutdown_timeout).
# --workers auto: one worker process per CPU the container may use, bounded by its CPU limit (docker run --cpus 1.5:
# 2 workers; no limit: every CPU of the host). It overrides `workers` in the configuration: give your own arguments
# (docker run IMAGE --config /etc/a3s-gateway/gateway.hcl) to let the file decide, or --workers N for a fixed count.
ENTRYPOINT ["a3s-gateway"]
CMD ["--config", "/etc/a3s-gateway/gateway.hcl", "--workers", "auto"]
