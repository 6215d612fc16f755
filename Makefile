# p2pfleet.imaging — developer entry points.
#   make demo   make a partition image, seed it, download it into a raw partition (loop devices)
#   make test   the whole test suite (real libtorrent, real loop devices; needs root)
#   make bench  throughput and start-up measurements, printed as a table
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := util-linux fdisk e2fsprogs iproute2 kmod aria2 chromium

.PHONY: deps venv demo test bench clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	touch $(STAMP)

venv: deps $(STAMP)

demo: venv
	$(PY) lab/demo.py

test: venv
	$(PY) -m pytest tests

bench: venv
	$(PY) benchmarks/engine_throughput.py
	$(PY) benchmarks/agent.py --size 512M
	$(PY) benchmarks/tracker_load.py --peers 1000 --count 30000

clean:
	rm -rf $(VENV) .pytest_cache
