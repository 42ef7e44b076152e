# cdpswitch developer entry points. `make serve` and `make test` set everything up.

PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
# The editable install maps each top-level package found at install time, so a package that
# gains its __init__.py later (or a new one) must trigger a reinstall as well.
PACKAGES := switch target volume_manager policies
PACKAGE_INITS := $(wildcard $(addsuffix /__init__.py,$(PACKAGES)))

# Debian packages the tests need (space separated). Empty is fine: `deps` then does nothing.
DEB_PACKAGES ?= libiscsi-bin qemu-utils qemu-block-extra

# Root needs no sudo; anyone else gets it prefixed.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# More Debian packages for `make bench` (bench/iscsi.py runs tgtd as its peer).
BENCH_DEB_PACKAGES ?= tgt

PYTEST_ARGS ?=

.PHONY: venv deps bench-deps lint test test-fast serve bench clean

venv: $(STAMP)

# Reruns only when pyproject.toml changes or a top-level package appears. Never upgrades pip
# or packages that are already satisfied.
$(STAMP): pyproject.toml $(PACKAGE_INITS)
	[ -x $(VPY) ] || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -e '.[test]'
	touch $@

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
		dpkg -s "$$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends $$missing; \
	fi

# Packages held to mypy --strict (the rest join as they get clean).
STRICT := volume_manager target/iscsi target/scsi switch policies

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict $(STRICT)

test: venv deps lint
	$(VPY) -m pytest $(PYTEST_ARGS)

test-fast: venv deps
	$(VPY) -m pytest -m "not slow" $(PYTEST_ARGS)

serve: venv
	$(VENV)/bin/cdpswitch serve

bench-deps: venv
	$(MAKE) deps DEB_PACKAGES="$(DEB_PACKAGES) $(BENCH_DEB_PACKAGES)"
	$(VPY) -m pip install -q -e '.[test,bench]'

bench: venv bench-deps
	$(VPY) bench/engine.py
	$(VPY) bench/iscsi.py
	$(VPY) bench/images.py
	$(VPY) bench/policy.py
	$(VPY) bench/sendpath.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .ruff_cache .mypy_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
