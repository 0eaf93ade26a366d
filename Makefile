# The two commands of the README: `make run` and `make test`. Everything else is set-up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SOURCES := pyproject.toml codec-rs/Cargo.toml $(wildcard codec-rs/src/*.rs codec-rs/src/*/*.rs)

.PHONY: run test lint test-rust test-python setup system-deps bench image clean

## make run: build everything and run the relay on its embedded defaults (127.0.0.1:8080)
run: setup
	$(VENV)/bin/relay serve

## make test: build everything, install what the tests need, lint and type-check, run the whole
## suite on the Rust codec (a test fails if the Rust build is not the one in use, or if the
## container image cannot be built for tests/image), then once more on the pure-Python twin
test: setup system-deps lint
	cargo test --quiet --manifest-path codec-rs/Cargo.toml
	RELAY_EXPECT_RUST=1 RELAY_EXPECT_IMAGE=1 $(PY) -m pytest -q
	RELAY_CODEC=python $(PY) -m pytest -q

## make lint: ruff and mypy with the rules of pyproject.toml, and mypy.stubtest of the Rust codec's
## stub (relay/_codec_rs.pyi) against the built module; any finding fails
lint: setup
	$(PY) -m ruff check relay tests benchmarks
	$(PY) -m mypy
	$(PY) -m mypy.stubtest relay._codec_rs

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# maturin (the build backend) compiles the Rust codec in release mode into relay/
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

system-deps:
	./scripts/install-system-deps.sh

## make image: the container image, built without a registry (base from Debian packages, then
## the Dockerfile with podman; docs/image.md). `docker build .` builds it on the public base.
image:
	./scripts/build-image.sh

## make bench: the codec benchmark and the end-to-end relay benchmark, with baselines
bench: setup
	$(PY) -m pytest benchmarks/test_codec_bench.py --benchmark-enable -q
	$(PY) benchmarks/relay_bench.py

clean:
	rm -rf $(VENV) codec-rs/target codec-rs/fuzz/target relay/_codec_rs*.so
