# p2pfleet.imaging — developer entry points.
#   make demo   reimage a virtual lab (1 server + 8 terminals) with reimage.yml; KEEP=1 keeps the lab
#   make demo-engine  the engine alone: seed a partition image, download it into another (loop devices)
#   make test   the whole test suite (real libtorrent, real loop devices; needs root)
#   make bench  throughput, start-up and fleet (virtual lab: HTTP vs swarm) measurements, printed as tables
#   make wheelhouse  the hosts' runtime wheels (requirements.txt) for offline installs, cached once
#   make lab-up / lab-down  a demo virtual lab (docs/lab.md)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := util-linux fdisk e2fsprogs iproute2 kmod aria2 chromium curl \
  debootstrap systemd-container grub-common gdisk openssh-client mount \
  efibootmgr libubootenv-tool u-boot-tools \
  qemu-system-x86 ovmf grub-efi-amd64-bin mtools busybox-static \
  prometheus python-is-python3
# The hosts' Python (Debian 12: CPython 3.11, glibc 2.36) for the wheelhouse.
WHEELHOUSE ?= $(or $(P2PFLEET_LAB_CACHE),/var/cache/p2pfleet-lab)/wheelhouse
# pip takes the platform tags literally: every manylinux level up to glibc 2.36 is listed.
ARCH := $(shell uname -m)
HOST_WHEELS := --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --platform linux_$(ARCH) $(foreach t,manylinux1 manylinux2010 manylinux2014 \
  $(foreach v,5 12 17 24 27 28 31 34 35 36,manylinux_2_$(v)),--platform $(t)_$(ARCH))

.PHONY: deps venv demo demo-engine test bench wheelhouse lab-up lab-down clean

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

demo: venv wheelhouse
	$(PY) lab/reimage_demo.py

demo-engine: venv
	$(PY) lab/demo.py

test: venv wheelhouse
	$(PY) -m pytest tests

bench: venv
	$(PY) benchmarks/engine_throughput.py
	$(PY) benchmarks/agent.py --size 512M
	$(PY) benchmarks/tracker_load.py --peers 1000 --count 30000
	$(PY) benchmarks/fleet.py --terminals 4,8 --size 128M
	$(PY) benchmarks/stages.py --terminals 4,8

wheelhouse: venv
	@stamp="$(WHEELHOUSE)/.requirements-$$(sha256sum requirements.txt | cut -c1-16)"; \
	if [ ! -e "$$stamp" ]; then \
	  mkdir -p "$(WHEELHOUSE)" && \
	  $(PY) -m pip download -q $(HOST_WHEELS) -r requirements.txt -d "$(WHEELHOUSE)" && touch "$$stamp"; \
	fi; echo "wheelhouse: $(WHEELHOUSE)"

lab-up: venv
	$(PY) -m lab --lab demo up --terminals 8 --rooms 2 --rate 100mbit --uplink 400mbit

lab-down: venv
	$(PY) -m lab --lab demo down

clean:
	rm -rf $(VENV) .pytest_cache
