# nixuv: the two commands that matter on a fresh machine are `make run` and `make test`.
CARGO ?= cargo
# PyPI tools (uv, kubernetes-validate, hadolint, actionlint) live in a virtual environment of
# their own (scripts/install-tools.sh): system Pythons refuse `pip install` (PEP 668).
export PATH := $(CURDIR)/.tools/venv/bin:$(PATH)
ADDR ?= 127.0.0.1:8443
BIN := target/debug/nixuv

.PHONY: run test tools fetch build certs lint unit clean bench image fuzz deny e2e

build:
	$(CARGO) build

## Dev certificates for localhost in certs/ (kept if present).
certs/tls.crt: | build
	$(BIN) certs --out-dir certs --dns-name localhost --ip 127.0.0.1 >/dev/null

certs: certs/tls.crt

## Run the webhook on https://$(ADDR) with the default config.
run: build certs
	$(BIN) serve --addr $(ADDR) --tls-cert certs/tls.crt --tls-key certs/tls.key

## Install the test tools (idempotent), fetch every crate, then lint and run every test.
test: tools fetch lint deny
	$(CARGO) test --locked --all-targets

## Every crate of Cargo.lock, for every target platform (not only this host's): `cargo deny
## --offline` reads the metadata of all of them, and an empty cargo registry must work.
fetch:
	$(CARGO) fetch --locked

tools:
	./scripts/install-tools.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	shellcheck scripts/*.sh deploy/images/*.sh .ci/run tests/support/in-pod tests/support/uv tests/support/nix-portable
	hadolint deploy/images/Dockerfile.webhook deploy/images/Dockerfile.init
	actionlint

## Fuzzing (proptest; cargo-fuzz needs nightly): many more cases than the test suite runs.
FUZZ_CASES ?= 20000
fuzz:
	FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --test it fuzz -- --test-threads 2

## Licenses, bans and sources of every dependency (offline).
deny: fetch
	command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install --locked cargo-deny
	$(CARGO) deny --offline check licenses bans sources

## End to end on a kind cluster (needs a Docker engine, kind and kubectl; says so and fails
## where one is missing). scripts/e2e-kind.sh; `make test` checks what it can without a cluster.
e2e:
	./scripts/e2e-kind.sh

## Benchmarks: criterion, h2load against the bare-TLS ceiling, latency, RSS, materialize.
bench: tools
	./scripts/bench.sh

clean:
	$(CARGO) clean
	rm -f certs/*.crt certs/*.key

## Container images for this machine's architecture (needs docker or podman with BuildKit; the
## release workflow builds linux/amd64 and linux/arm64). Build args from deploy/images/versions.env.
IMAGE_REPO ?= ghcr.io/nixuv
VERSION ?= 0.1.0
include deploy/images/versions.env
BUILDER ?= $(shell command -v docker || command -v podman)
ARCH ?= $(shell uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')
IMAGE_ARGS = --build-arg RUST_IMAGE=$(RUST_IMAGE) --build-arg RUNTIME_IMAGE=$(RUNTIME_IMAGE) \
  --build-arg DEBIAN_IMAGE=$(DEBIAN_IMAGE) --build-arg UV_IMAGE=$(UV_IMAGE) \
  --build-arg NIX_PORTABLE_VERSION=$(NIX_PORTABLE_VERSION) \
  --build-arg NIX_PORTABLE_SHA256_AMD64=$(NIX_PORTABLE_SHA256_AMD64) --build-arg NIX_PORTABLE_SHA256_ARM64=$(NIX_PORTABLE_SHA256_ARM64) \
  --build-arg PYTHON_BUILD_STANDALONE_RELEASE=$(PYTHON_BUILD_STANDALONE_RELEASE) --build-arg PYTHON_MINORS=$(PYTHON_MINORS)
image:
	@test -n "$(BUILDER)" || { echo "make image: no docker or podman here"; exit 1; }
	@case "$(ARCH)" in amd64) test -n "$(NIX_PORTABLE_SHA256_AMD64)";; arm64) test -n "$(NIX_PORTABLE_SHA256_ARM64)";; *) false;; esac \
	  || { echo "make image: no nix-portable checksum for $(ARCH) in deploy/images/versions.env"; exit 1; }
	$(BUILDER) build --platform linux/$(ARCH) -f deploy/images/Dockerfile.webhook $(IMAGE_ARGS) -t $(IMAGE_REPO)/nixuv:$(VERSION) .
	$(BUILDER) build --platform linux/$(ARCH) -f deploy/images/Dockerfile.init $(IMAGE_ARGS) -t $(IMAGE_REPO)/nixuv-init:$(VERSION) .
