# One entry point for a fresh machine: `make run` brings the gateway up on its embedded default,
# `make test` runs the whole suite. Both install what they need first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: setup vllm router run test bench services image mutation

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, from the CPU wheel pip finds locally: a bare `torch` pulls GBs of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

vllm:
	bash scripts/setup-vllm.sh

router: setup
	test -f var/routers/embedding-domain/router.json || $(VENV)/bin/moe router train --out var/routers/embedding-domain

run: setup vllm router
	$(VENV)/bin/moe up

services:
	bash scripts/services.sh

# The gateway image (podman, installed here if missing), with the default router baked in; cached.
image: setup router
	ROUTERS=var/routers bash scripts/image.sh

test: setup vllm services image
	$(PY) -m pytest -ra

bench: setup router
	$(PY) bench/overhead.py

# Mutation testing of the parts whose tests need no server (scope in bench/mutation.py): mutants/ is scratch,
# the report goes to bench/results/mutation.{json,md}. About 5 minutes on 2 cores.
mutation: setup
	$(PY) bench/mutation.py
