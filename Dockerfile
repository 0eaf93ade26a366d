# syntax=docker/dockerfile:1
# The relay's container image: `docker build -t iot-tunnel-relay .` at the repository root
# (or `podman build`). Without a registry: scripts/build-image.sh (`make image`) makes the base
# from Debian packages and passes it as BASE_IMAGE (docs/image.md).
#
#   build    the base plus gcc and Debian's Rust toolchain; builds the relay's wheel (maturin
#            compiles the Rust codec, release profile) and installs it with its dependencies
#            into the virtualenv /opt/relay.
#   runtime  the same base with only that virtualenv and tini, as an unprivileged user.
#
# Both stages start from the same base, so the virtualenv's interpreter (a link to the base's
# python3) and the glibc the codec links against are the same in both. The base must be
# Debian 12 (bookworm) with python3 >= 3.11 and its venv module: python:3.11-slim-bookworm
# (the default) or Debian's python3 + python3-venv.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# rustc-web/cargo-web: Debian 12's current Rust (its plain `cargo` is too old for crates.io);
# rustc needs a C linker; tini is copied into the runtime stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev rustc-web cargo-web tini \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    CARGO_HOME=/tmp/cargo
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps build outputs and local .so files out).
COPY pyproject.toml README.md ./
COPY codec-rs ./codec-rs
COPY relay ./relay
# `pip wheel .` runs maturin (the build backend, profile = release in pyproject.toml) and also
# collects the wheels of the dependencies; they are installed into /opt/relay without pip.
# Cargo's downloads and build directory go, so that this cache layer stays small.
# A machine whose TLS is intercepted passes its CA bundle as the build secret `cacert`
# (scripts/build-image.sh does): used for pip and cargo here, never written into a layer.
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then \
      export PIP_CERT=/run/secrets/cacert CARGO_HTTP_CAINFO=/run/secrets/cacert SSL_CERT_FILE=/run/secrets/cacert; \
    fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --wheel-dir /wheels . \
 && rm -rf "$CARGO_HOME" codec-rs/target
# Outside /src, so that `import relay` finds the installed package and not the sources. The
# wheels' debugging symbols are stripped (uvloop's alone are about 10 MB).
WORKDIR /
RUN python3 -m venv --without-pip /opt/relay \
 && /opt/build/bin/pip --python /opt/relay/bin/python install --no-index --find-links=/wheels iot-tunnel-relay \
 && find /opt/relay -name '*.so' -exec strip --strip-unneeded {} + \
 && /opt/relay/bin/relay --help >/dev/null \
 && /opt/relay/bin/python -c "import relay.codec, sys; sys.exit(relay.codec.IMPLEMENTATION != 'rust')"

FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/relay/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_HOST=0.0.0.0 \
    RELAY_INTERNAL_HOST=0.0.0.0
# A fixed numeric uid/gid, so that Kubernetes can check runAsNonRoot (deploy/k8s uses 10001).
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --home-dir /var/lib/relay --create-home --shell /usr/sbin/nologin relay
COPY --from=build /usr/bin/tini-static /usr/bin/tini
COPY --from=build /opt/relay /opt/relay
# Without RELAY_STORE_URL the relay keeps its SQLite file (and a generated API token) under
# var/ of the working directory: mount a volume at /var/lib/relay to keep them (the root file
# system may be read-only: deploy/k8s sets RELAY_DB=/tmp/relay.db on an emptyDir instead).
WORKDIR /var/lib/relay
USER 10001:10001
# 8080: REST API and WebSockets. 8081: the internal port (RELAY_INTERNAL_PORT: /livez,
# /readyz, /metrics, replica-to-replica forwarding); the relay opens it only when set, and on
# 0.0.0.0 here (RELAY_INTERNAL_HOST above): /metrics answers anyone who reaches it, bridges
# only replicas holding the bridge secret. Keep it unreachable from outside the replicas and
# the metrics scraper (deploy/k8s/base/networkpolicy.yaml).
EXPOSE 8080 8081
# tini as PID 1 passes SIGTERM on to the relay, which drains and exits, and reaps any child.
# Without it the relay would be PID 1, which gets no default signal actions: a SIGTERM while
# it starts, before its handler is set, would be ignored until SIGKILL (tests/image checks).
ENTRYPOINT ["tini", "--", "relay"]
CMD ["serve"]
