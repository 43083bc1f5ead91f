# mooring's entry points. Every target can be run again; each does only what is missing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)
LAB_INVENTORY := inventory/lab

.PHONY: help venv engine images registry ee lab lab-down test unit lint sanity molecule molecule-scenarios
.PHONY: integration-registry integration-lab lab-timed bench

help:
	@echo "make lab       bring up the embedded lab and run site.yml on it (the main job)"
	@echo "make test      lint, unit tests, ansible-test sanity, Molecule scenarios and integration tests"
	@echo "make unit      the fast unit tests alone (no root, no docker)"
	@echo "make ee        build mooring's execution environment (ansible-builder, offline) on this machine's engine"
	@echo "make lab-down  remove every container, network, volume, image tag and file the lab made"
	@echo "make lint      ansible-lint (production), yamllint, ruff"
	@echo "make bench     converge, push, middleware, runtime and swarm benchmarks (bench/)"
	@echo "make venv      the pinned toolchain in $(VENV)"

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

# This machine's docker engine, by the docker_host role itself, then the lab's base images.
engine: venv
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml --tags engine

images: venv
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml --tags engine,images

registry: venv
	@echo "== lab engine, images and registry from $$(date +%T)"
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml --tags engine,images,registry

# The execution environment for AWX/AAP (ee/execution-environment.yml), from the lab's base image.
ee: registry
	@echo "== execution environment from $$(date +%T)"
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml --tags ee

lab: venv
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml
	ansible-playbook -i $(LAB_INVENTORY) site.yml
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab_summary.yml

lab-down: venv
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab_down.yml

lint: venv
	@echo "== lint from $$(date +%T)"
	yamllint --strict .
	ansible-lint --offline --profile production
	ruff check .
	ruff format --check .
	pycodestyle --max-line-length 160 --ignore E402,W503,W504,E741,E203,E701,E704 $$(git ls-files "*.py") bin/mooring-ctr
	antsibull-changelog lint

sanity: venv
	@echo "== sanity from $$(date +%T)"
	tests/sanity.sh

molecule: registry
	@$(MAKE) --no-print-directory molecule-scenarios

molecule-scenarios: venv
	@echo "== molecule from $$(date +%T)"
	molecule test --all

# Pure logic, no root, no docker, no lab: seconds.
unit: venv
	pytest -q tests/unit

# Each phase says when it starts, and pytest lists its slowest tests: make test's time is watched (limit 60 min).
# Sanity is CPU work and the lab's images mostly wait on the mirror, so the two run side by side (output kept
# per target); the execution environment builds after the registry, also beside sanity. The integration tests
# that need at most the registry (the runtime, the Harbor modules, the collection; `-m "not lab"`) run beside
# Molecule, which needs the registry too, and beside the lab's bring-up (its hosts and site.yml mostly wait on
# the mirror and on health checks; Molecule builds under its own image names). The tests on the lab hosts
# (`-m lab`) come last, on the lab made beside them.
test: lint unit
	@$(MAKE) --no-print-directory --output-sync=target -j2 sanity ee
	@$(MAKE) --no-print-directory --output-sync=target -j3 molecule-scenarios integration-registry lab-timed \
	    || { MOORING_LAB_DOWN=1 pytest -q tests/integration/test_lab_down.py; exit 1; }
	@$(MAKE) --no-print-directory integration-lab LAB_IS_UP=1

lab-timed: venv
	@echo "== lab for the integration tests from $$(date +%T)"
	@$(MAKE) --no-print-directory lab
	@echo "== lab up at $$(date +%T)"

integration-registry: venv
	@echo "== integration tests without the lab hosts from $$(date +%T)"
	pytest --durations=15 -m "not lab" tests/integration

# The lab once; the tests that act on the whole lab alone; then one service's test file per worker, two side by
# side (their plays mostly wait: health checks, drains, replicas); then the swarm's, which stop a host's engine,
# alone; then the lab down, checked. A failure still takes the lab down.
LAB_KEPT = MOORING_KEEP_LAB=1 MOORING_LAB_READY=1
integration-lab: venv
	@[ -n "$(LAB_IS_UP)" ] || $(MAKE) --no-print-directory lab-timed
	@trap 'status=$$?; [ $$status -eq 0 ] || MOORING_LAB_DOWN=1 pytest -q tests/integration/test_lab_down.py; \
	       exit $$status' EXIT; \
	set -e; \
	echo "== integration tests on the whole lab from $$(date +%T)"; \
	$(LAB_KEPT) pytest --durations=15 -m "lab and lab_alone" tests/integration; \
	echo "== integration tests of one service each, two side by side, from $$(date +%T)"; \
	$(LAB_KEPT) pytest --durations=25 -n 2 --dist loadfile -m "lab and not lab_alone and not lab_last" tests/integration; \
	echo "== integration tests that stop a lab host's engine (the swarm), alone, from $$(date +%T)"; \
	$(LAB_KEPT) pytest --durations=10 -m "lab and lab_last" tests/integration; \
	echo "== lab down from $$(date +%T)"; \
	MOORING_LAB_DOWN=1 pytest -q tests/integration/test_lab_down.py

bench: lab
	command -v podman >/dev/null && command -v crun >/dev/null || apt-get install -y -qq podman crun >/dev/null
	python bench/converge.py
	python bench/push.py
	python bench/middleware.py
	python bench/runtime.py
	python bench/swarm.py
