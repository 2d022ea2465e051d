# One entry point for people and CI. `make test` and `make run` set up .venv/ first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup peers run test lint typecheck pytest bench demo clean image image-tools image-test

# The image (image/): built with `docker build` where a Docker engine answers, else with Debian's buildah from a
# bootstrapped Debian base cached in IMAGE_CACHE; image-test runs it against loopback peers (image/prove.py).
IMAGE_TAG ?= registry-bot:dev
IMAGE_CACHE ?= /var/cache/registry-bot-image
IMAGE_ENV = IMAGE_TAG=$(IMAGE_TAG) IMAGE_CACHE=$(IMAGE_CACHE)

# The real servers the tests and the demo start (each on a free loopback port, stopped afterwards).
PEER_PACKAGES := docker-registry prometheus prometheus-pushgateway prometheus-alertmanager postgresql strace

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

peers:
	@missing=""; for bin in docker-registry prometheus prometheus-pushgateway prometheus-alertmanager strace; do \
	  command -v $$bin >/dev/null || missing="$$missing $$bin"; done; \
	  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(PEER_PACKAGES) >/dev/null; \
	  else echo "missing:$$missing; run: sudo apt-get install $(PEER_PACKAGES)"; exit 1; fi; fi

run: setup
	$(BIN)/registry-bot serve

lint: setup
	$(BIN)/ruff check bot tests benchmarks image
	$(BIN)/ruff format --check bot tests benchmarks image

typecheck: setup
	$(BIN)/mypy bot

pytest: setup peers
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: setup peers
	$(BIN)/python benchmarks/scan.py
	$(BIN)/python benchmarks/deep.py
	$(BIN)/python benchmarks/ack.py

demo: setup peers
	$(BIN)/python -m tests.story

image-tools:
	@$(IMAGE_ENV) image/tools.sh

image: image-tools
	@$(IMAGE_ENV) image/build.sh

image-test: setup image
	@$(IMAGE_ENV) image/test.sh $(BIN)/python

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
