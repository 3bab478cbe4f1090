# syntax=docker/dockerfile:1
#
# fileshare: streaming upload proxy with a ClamAV pipeline in front of object storage.
#
#   docker build -t fileshare:dev .
#   docker run --rm --read-only -p 8080:8080 --env-file my.env fileshare:dev
#
# Two stages: "build" installs the package and its dependencies into a virtualenv at
# /opt/fileshare; "runtime" copies only that virtualenv onto a fresh slim image. No compiler,
# no pip, no setuptools and no source tree reach the final image.
#
# The image runs as the unprivileged user 10001 and works with a read-only root filesystem:
# bytecode is compiled at build time and never written at run time, nothing else is
# written to disk (upload bytes go from the socket to object storage and clamd).
#
# Pin the base by digest in your registry mirror for reproducible builds, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

RUN python -m venv /opt/fileshare

# Everything the build needs, nothing else (see .dockerignore).
COPY pyproject.toml README.md ./
COPY fileshare ./fileshare

# All runtime dependencies ship manylinux wheels for CPython 3.11, so no compiler is needed.
# pip compiles every module to bytecode while installing (the root filesystem is read-only
# at run time, so nothing could be cached later); then the installers leave the venv.
RUN /opt/fileshare/bin/pip install --no-cache-dir . \
    && /opt/fileshare/bin/pip uninstall --yes pip setuptools \
    && /opt/fileshare/bin/python -m compileall -q /opt/fileshare/lib \
    && /opt/fileshare/bin/python -c "import fileshare" \
    && test -x /opt/fileshare/bin/fileshare


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="fileshare" \
      org.opencontainers.image.description="Streaming upload proxy with a ClamAV pipeline in front of object storage" \
      org.opencontainers.image.licenses="Apache-2.0"

# PYTHONDONTWRITEBYTECODE: never try to write .pyc next to the (read-only) sources.
# PYTHONUNBUFFERED: logs leave at once (structlog JSON on stdout).
# FILESHARE_HOST: listen on every interface of the pod, not only on loopback.
ENV PATH=/opt/fileshare/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    FILESHARE_HOST=0.0.0.0 \
    FILESHARE_PORT=8080 \
    FILESHARE_LOG_FORMAT=json

RUN groupadd --system --gid 10001 fileshare \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin fileshare

COPY --from=build /opt/fileshare /opt/fileshare

# Numeric so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /opt/fileshare

EXPOSE 8080

# No curl in the slim image: python's urllib asks /healthz (liveness only; readiness,
# which also needs clamd and storage, is /readyz and belongs to the orchestrator).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:' + os.environ.get('FILESHARE_PORT', '8080') + '/healthz', timeout=4).close()"]

# SIGTERM: stop accepting, turn not-ready, drain in-flight uploads for FILESHARE_SHUTDOWN_GRACE.
STOPSIGNAL SIGTERM

ENTRYPOINT ["fileshare"]
CMD ["serve"]
