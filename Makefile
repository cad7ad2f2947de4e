# Two commands do everything on a fresh machine:  `make run`  and  `make test`.
# VENV may point elsewhere (CI builds it in a temporary folder): make test VENV=/tmp/x/venv
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.initmatters-installed
FLWR_HOME_DIR := $(abspath .flwr)
ARGS ?=

.PHONY: setup run test lint

# Create the venv, install the pinned stack, and make a plain `flwr run .` work offline:
# the activate script exports the Flower environment.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	printf '%s\n' '# initmatters: offline Flower runs' \
	  'export FLWR_HOME="$(FLWR_HOME_DIR)" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1' \
	  'export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1' \
	  >> $(VENV)/bin/activate
	touch $(STAMP)

# FLWR_HOME's config.toml: the local simulation connection, in Flower 1.41's format (the federation
# size is given per run: flwr run . --federation-config "num-supernodes=10"). A config.toml written
# by an earlier version of this Makefile loses its deprecated `options.` lines, nothing else.
FLWR_CONFIG := $(FLWR_HOME_DIR)/config.toml
$(FLWR_CONFIG): Makefile
	mkdir -p $(FLWR_HOME_DIR)
	if test -f $@; then sed -i -e '/^options\.num-supernodes = 10$$/d' \
	  -e '/^options\.backend\.client-resources\.num-cpus = 1$$/d' $@; \
	else printf '%s\n' '[superlink]' 'default = "local"' '' '[superlink.local]' 'address = ":local:"' > $@; fi
	touch $@

setup: $(STAMP) $(FLWR_CONFIG)

run: setup
	$(PYTHON) -m initmatters.run $(ARGS)

test: setup
	$(PYTHON) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
