# Two commands for a newcomer: `make demo` and `make test`. Everything they need is set up here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
STATE := $(CURDIR)/.state
VENV := $(CURDIR)/.venv
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_COMPILE_BYTECODE := 1
export CONTRACT_EXTRACTS_HOME ?= $(STATE)

.PHONY: help demo ui test lint lock venv build-deps system-deps clean

help:
	@echo "make demo   set up and run both demo contracts through Airflow (SQLite source, local drop folder)"
	@echo "make ui     Airflow on the demo state (after make demo): http://127.0.0.1:8080, Ctrl-C stops it"
	@echo "make test   set up and run the whole test suite (unit, integration, end-to-end)"
	@echo "make lint   ruff and mypy (strict)"
	@echo "make lock   re-pin constraints.txt from pyproject.toml"

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet --disable-pip-version-check uv

# build-deps first (order-only: it never forces a reinstall): mysqlclient compiles against its headers.
$(VENV)/.installed: pyproject.toml constraints.txt | $(UV) build-deps
	$(UV) venv --quiet --allow-existing -p $(PYTHON) $(VENV)
	$(UV) pip install --quiet -p $(VENV)/bin/python -c constraints.txt -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# Debian packages the demo and tests use, installed only when missing (command:package):
# age (recipient-side CLI), sshd (real SFTP server in tests), gpg (OpenPGP recipients), chromium (UI test).
SYSTEM_DEPS := age:age /usr/sbin/sshd:openssh-server gpg:gnupg chromium:chromium
# Debian packages building the venv: mysqlclient (the C MySQL/MariaDB driver, the extract's fast path) has no
# Linux wheel; it compiles against MariaDB Connector/C, found through pkg-config (libmariadb-dev, checked by
# its pkg-config module below), with a C compiler and the headers of $(PYTHON) (pythonX.Y-dev, checked below).
# The project's own build hook (hatch_build.py) compiles masking's keyed-hashing extension against OpenSSL's
# libcrypto (libssl-dev, checked by its pkg-config module below) with the same compiler and Python headers.
BUILD_DEPS := pkg-config:pkg-config gcc:gcc
PYTHON_HEADERS := import os, sys, sysconfig; \
  print("" if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) \
        else "python%d.%d-dev" % sys.version_info[:2])
# Shell: install the packages listed in $$missing (as root), or say how to.
APT_INSTALL := if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing - install them with: sudo apt-get install$$missing" >&2; exit 1; fi; fi

build-deps:
	@missing=""; for pair in $(BUILD_DEPS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	headers=$$($(PYTHON) -c '$(PYTHON_HEADERS)' 2>/dev/null); missing="$$missing$${headers:+ $$headers}"; \
	pkg-config --exists libmariadb 2>/dev/null || missing="$$missing libmariadb-dev"; \
	pkg-config --exists libcrypto 2>/dev/null || missing="$$missing libssl-dev"; \
	$(APT_INSTALL)

system-deps: build-deps
	@missing=""; for pair in $(SYSTEM_DEPS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	$(APT_INSTALL)

demo: venv system-deps
	$(VENV)/bin/contract-extracts demo

# Airflow (standalone: scheduler, dag-processor, api-server, triggerer) on what `make demo` left in .state, to look at
# it in a browser; prints the address and the local login. AIRFLOW_UI_PORT=8081 picks another port.
ui: venv
	$(VENV)/bin/python -m airflow_glue.local_ui

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Two pytest runs, both always (the recipe fails if either failed): the unit and integration tests spread over
# two processes (pytest-xdist; a module's tests stay in one, sharing its module-scoped fixtures), then the
# end-to-end tests (marked e2e) in one process: each runs real Airflow components and wants both cores.
test: venv system-deps lint
	status=0; \
	$(VENV)/bin/pytest -m "not e2e" -n 2 --dist loadscope || status=$$?; \
	$(VENV)/bin/pytest -m e2e || status=$$?; \
	exit $$status

lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra dev --extra bench --python 3.11 --no-header --quiet -o constraints.txt

clean:
	rm -rf $(STATE) $(VENV) $(CURDIR)/.tools .pytest_cache
