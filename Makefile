# cxmesh — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
GENERATED := build/.generated
PROTOS := $(shell find protos -name '*.proto')
ONLY ?=

.PHONY: setup gen lint fmt typecheck test run bench token clean

# The virtual environment and every dependency (pyproject.toml is the one list).
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Python client package, type stubs and Envoy's descriptor set, from the same protos.
$(GENERATED): $(INSTALLED) $(PROTOS) clients/gen_protos.py
	$(BIN)/python clients/gen_protos.py
	# Reinstalled so that the editable install sees the generated package.
	$(BIN)/pip install --quiet --no-deps -e .
	# ZIP code and area code tables (zone, state), from the zipcodes and phonenumbers data.
	$(BIN)/python -m cxmesh_server.contacts.places build
	touch $@

setup: $(GENERATED)

gen: $(INSTALLED)
	rm -f $(GENERATED)
	$(MAKE) $(GENERATED)

lint: setup
	$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest

run: setup
	$(BIN)/python -m cxmesh_server.stack.run

bench: setup
	$(BIN)/python -m bench $(if $(ONLY),--only $(ONLY))

# A development bearer token: make token TENANT=demo ROLE=admin
token: setup
	$(BIN)/cxmesh dev-token --tenant $(or $(TENANT),demo) --role $(or $(ROLE),admin)

clean:
	rm -rf $(VENV) build clients/cxmesh .mypy_cache .ruff_cache .pytest_cache
