# syntax=docker/dockerfile:1
# The relay's container image: `docker build -t iot-tunnel-relay .` at the repository root.
#
#   build    CPython 3.11 (the same as the runtime's, so the wheel's cp311 tag and glibc
#            match) plus the Rust toolchain of the official rust image; builds the relay's
#            wheel (maturin compiles the Rust codec, release profile) and the wheels of its
#            dependencies.
#   runtime  python:3.11-slim with only those wheels installed, as an unprivileged user.
#
# Both stages are bookworm: the wheel links against the build stage's glibc.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUST_IMAGE=rust:1-slim-bookworm

FROM ${RUST_IMAGE} AS rust

FROM ${PYTHON_IMAGE} AS build
# rustc needs a C linker; maturin and pip do the rest.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY --from=rust /usr/local/cargo /usr/local/cargo
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps build outputs and local .so files out).
COPY pyproject.toml README.md ./
COPY codec-rs ./codec-rs
COPY relay ./relay
# `pip wheel .` runs maturin (the build backend, profile = release in pyproject.toml) and
# also collects the wheels of the runtime dependencies, so the runtime stage needs no
# compiler and no source.
RUN pip wheel --wheel-dir /wheels . \
 && python -c "import pathlib, sys; sys.exit(not list(pathlib.Path('/wheels').glob('iot_tunnel_relay-*.whl')))"

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    RELAY_HOST=0.0.0.0 \
    RELAY_INTERNAL_HOST=0.0.0.0
# A fixed numeric uid/gid, so that Kubernetes can check runAsNonRoot (deploy/k8s uses 10001).
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --home-dir /var/lib/relay --create-home --shell /usr/sbin/nologin relay
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels iot-tunnel-relay \
 && relay --help >/dev/null
# Without RELAY_STORE_URL the relay keeps its SQLite file (and a generated API token) under
# var/ of the working directory: mount a volume at /var/lib/relay to keep them.
WORKDIR /var/lib/relay
USER 10001:10001
# 8080: REST API and WebSockets. 8081: the internal port (RELAY_INTERNAL_PORT: /livez,
# /readyz, /metrics, replica-to-replica forwarding); the relay opens it only when set, and on
# 0.0.0.0 here (RELAY_INTERNAL_HOST above): /metrics answers anyone who reaches it, bridges
# only replicas holding the bridge secret. Keep it unreachable from outside the replicas and
# the metrics scraper (deploy/k8s/base/networkpolicy.yaml).
EXPOSE 8080 8081
# The relay handles SIGTERM itself (drain, then exit), also as PID 1; it starts no children
# here (mosquitto, which `relay serve` may run for development, is not in the image).
ENTRYPOINT ["relay"]
CMD ["serve"]
