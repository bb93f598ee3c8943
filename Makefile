# Corral — developer and demo entry points. See README.md.
#
#   make demo    install system packages, create .venv, init a single-host cluster, boot a VM
#   make test    the whole suite: unit + integration on real QEMU (what CI runs)
#   make check   ruff + mypy + unit tests (fast, no root)
#   make bench   benchmarks (figures printed; see bench/README.md)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
KERNEL_CACHE := $(CURDIR)/.cache/busybox
XEN_APPLIANCE := $(CURDIR)/.cache/xen-appliance

.PHONY: all deps venv kernel xen-appliance test unit integration check lint typecheck demo demo-clean bench clean

all: check

deps:
	scripts/install-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# The guest kernel + initrd used by integration tests (fetched once with apt-get download).
# (apt-get update first if the package index does not know the kernel package yet.)
kernel:
	corral/osdefs/busybox/prepare-kernel --cache $(KERNEL_CACHE) --out $(KERNEL_CACHE)/out >/dev/null \
	  || { apt-get update -q >/dev/null && \
	       corral/osdefs/busybox/prepare-kernel --cache $(KERNEL_CACHE) --out $(KERNEL_CACHE)/out >/dev/null; }

# The Xen test appliance (Xen 4.17 + Debian dom0 image booted under QEMU by the Xen tests):
# built once (debootstrap; ~2 min here), rebuilt only when scripts/xen-appliance/build.sh,
# dom0-boot or the Python dependency list change (stamp file). Needs root and the network.
xen-appliance: venv kernel
	scripts/xen-appliance/build.sh $(XEN_APPLIANCE)

test: deps venv kernel xen-appliance
	CORRAL_TEST_KERNEL_DIR=$(KERNEL_CACHE)/out $(PY) -m pytest -q $(PYTEST_ARGS) tests

unit: venv
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/unit

lint: venv
	$(VENV)/bin/ruff check corral tests bench
	$(VENV)/bin/ruff format --check corral tests bench

typecheck: venv
	$(VENV)/bin/mypy

check: lint typecheck unit

demo: deps venv
	scripts/demo.sh

demo-clean: venv
	scripts/demo.sh --clean

bench: venv
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
