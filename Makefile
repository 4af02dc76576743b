# Two entry points for a new user (see README): `make demo` and `make test`.
# Both set everything up on a fresh machine: a virtualenv with the pinned
# Python dependencies (constraints.txt), Apache Kafka's jars and OpenSearch (with k-NN)
# from Maven Central.

VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/interest-stream
PYTEST_ARGS ?=

.PHONY: install demo test lint typecheck unit integration clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints.txt -e '.[cpu,dev]'
	$(CLI) kafka install
	$(CLI) opensearch install
	touch $@

demo: install
	$(CLI) demo

# lint-imports checks the layers ([tool.importlinter] in pyproject.toml); it cannot see
# through the editable install (package-dir), so it runs on the installed layout: a
# tree of links under build/importlinter (as .ci/typecheck.py makes for mypy).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -c "import sys; sys.path.insert(0, '.ci'); import typecheck as t; t.link_tree(t.ROOT / 'build' / 'importlinter')"
	cd build/importlinter && PYTHONPATH=. $(abspath $(VENV))/bin/lint-imports --no-cache --no-logo ../../pyproject.toml

typecheck: install
	$(PY) .ci/typecheck.py

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# The whole suite: lint, types, unit and integration tests against a real Kafka
# broker that the test session starts itself (never skipped).
test: install lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
