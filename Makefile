# rackfire: `make demo` brings up the shop stack on this machine; `make test` runs the suite.
# Both install what they need first (Debian 12, as root).

VENV   ?= .venv
PY     := $(VENV)/bin/python
RF     := $(VENV)/bin/rackfire
DATA   ?= /var/lib/rackfire
DEB_PKGS := runc haproxy debootstrap iproute2 e2fsprogs util-linux python3-venv python3 nftables \
            restic xfsprogs openssh-server openssh-client

.PHONY: deps venv lock demo demo-cluster test chaos bench lint typecheck unit integration clean-demo clean-cluster

deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Every Python package at the version in constraints.txt, the versions CI passed with: a new
# release upstream changes nothing here without a commit. `make lock` writes it anew after a
# change of dependencies in pyproject.toml.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[dev]'
	{ echo "# The versions CI passed with (make lock writes this file; make venv installs it)."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v '^setuptools=='; } > constraints.txt
	rm -rf $(LOCK_VENV)

venv: $(VENV)/.installed

demo: deps venv
	$(RF) up -f examples/shop/stack.yaml --data-dir $(DATA) --timeout 1200
	@echo
	@echo "The shop is at http://127.0.0.1:8080/ ; one request to it now (lb -> app -> mem -> db):"
	@curl -si --max-time 10 http://127.0.0.1:8080/ | grep -iE '^(HTTP|x-served-by|x-release)|visit' || true
	@echo
	@echo "Next: $(RF) push shop/app examples/shop/app    $(RF) releases shop/app    $(RF) ps shop"
	@echo "      $(RF) destroy shop    $(RF) server stop"

# Three simulated hosts (network namespaces on an underlay bridge), each running a real
# `rackfire agent` joined to a server of their own (port 7490).
demo-cluster: deps venv
	$(PY) -m rackfire.testbed up --hosts 3

clean-cluster: venv
	$(PY) -m rackfire.testbed down

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test: deps venv lint
	$(VENV)/bin/pytest -q tests

# Hosts failing on the 3-host bed (tests/integration/test_chaos.py), each case CHAOS_RUNS times
# with a CHAOS_PARTITION-second partition, figures printed; `make test` runs each once, with
# an 8-second partition.
CHAOS_RUNS      ?= 20
CHAOS_PARTITION ?= 60
chaos: deps venv
	CI=true RACKFIRE_CHAOS_RUNS=$(CHAOS_RUNS) RACKFIRE_CHAOS_PARTITION=$(CHAOS_PARTITION) \
	  $(VENV)/bin/pytest -q -s tests/integration/test_chaos.py

# Every benchmark, side by side with the peers it installs and starts (LXC, podman, dockerd),
# then docs/benchmarks.md rewritten from the results. `make bench BENCH="plan schedule"` for
# some; RUNS=N repetitions (default: each bench's own, 5; failover 10).
BENCH ?=
RUNS  ?=
bench: deps venv
	$(PY) -m bench $(BENCH) $(if $(RUNS),--runs $(RUNS))

clean-demo: venv
	-$(RF) destroy shop -y
	-$(RF) server stop
