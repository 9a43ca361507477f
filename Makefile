# a3s-gateway — developer entry points. `make run` and `make test` work on a fresh Debian + Python 3.11 machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.dev-installed
SRC    := $(shell find src csrc -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.c' -o -name '*.h' 2>/dev/null)

.PHONY: run test test-pure build lint bench clean services

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required"'
	@$(PYTHON) -m venv $(VENV) || { echo "python venv failed: apt-get install -y python3-venv"; exit 1; }
	$(PIP) install -q --upgrade pip setuptools wheel

# Build the compiled extensions (C head scanner, Cython modules, mypyc group) into the editable install.
$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(SRC)
	$(PIP) install -q "Cython>=3.0" "mypy>=1.10" "python-hcl2>=7.0" setuptools wheel
	$(PIP) install -q --no-build-isolation -e .
	$(PY) -m a3s_gateway.config.grammar > /dev/null  # HCL grammar tables shipped in the package (fast first start)
	@touch $@

build: $(STAMP)

# the dev extras only: reinstalling the package itself would build the extensions a second time
$(DEVSTAMP): $(STAMP)
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]))' > $(VENV)/dev-requirements.txt
	$(PIP) install -q -r $(VENV)/dev-requirements.txt
	@touch $@

run: $(STAMP)
	$(PY) examples/run_demo.py examples/quickstart.hcl

# External programs the tests run (redis-server for rate-limit-redis, curl, openssl): installed with apt-get when missing and we
# are root; otherwise the tests that need one skip with the install hint (and fail under A3S_REQUIRE_SERVICES=1).
services:
	@missing=""; for tool in redis-server curl openssl; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	  else echo "note:$$missing not found (apt-get install -y$$missing): the tests that need them will skip"; fi; fi

# The whole suite on the compiled build (unit tests also run every pure twin), then the end-to-end tests again
# with the pure-Python twins of the Cython modules selected at run time.
test: $(DEVSTAMP) services
	$(PY) -m pytest -q tests
	A3S_GATEWAY_NO_EXTENSIONS=1 $(PY) -m pytest -q tests/integration

# The whole suite again against the pure-Python twins of the Cython modules.
test-pure: $(DEVSTAMP)
	A3S_GATEWAY_NO_EXTENSIONS=1 $(PY) -m pytest -q tests

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy --strict src/a3s_gateway

bench: $(DEVSTAMP)
	$(PY) -m pytest bench --benchmark-only -s

clean:
	rm -rf build dist *.egg-info src/*.egg-info .pytest_cache .mypy_cache
	find src -name '*.so' -delete
	find src -name '*.c' -delete
