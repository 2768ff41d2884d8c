# One entry point for a fresh machine: `make run` brings the gateway up on its embedded default,
# `make test` runs the whole suite. Both install what they need first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
# The extras `make setup` installs: `train` (torch, transformers, scikit-learn...: training routers and building
# the encoder caches) and `test`. `make setup EXTRAS=` is a serving install (about 0.6 GB instead of 2.5 GB):
# it serves routers already trained, from encoder caches already built. scripts/image.sh reads TORCH_VERSION too.
EXTRAS ?= train,test
TORCH_VERSION ?= 2.13.0
comma := ,
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: setup vllm router run test bench cold-start services image chromium mutation

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# With the train extra, torch first, from the CPU wheel pip finds locally: a bare `torch` pulls GBs of CUDA
	# packages.
	$(if $(filter train,$(subst $(comma), ,$(EXTRAS))),$(PY) -m pip install -q torch==$(TORCH_VERSION))
	$(PY) -m pip install -q -e ".$(if $(EXTRAS),[$(EXTRAS)])"
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
	ROUTERS=var/routers TORCH_VERSION=$(TORCH_VERSION) bash scripts/image.sh

# Debian's Chromium, which the dashboard's browser tests drive headless (installed here if missing).
AS_ROOT := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	test -x /usr/bin/chromium || { $(AS_ROOT) apt-get update -qq && \
		$(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: setup vllm services image chromium
	$(PY) -m pytest -ra

bench: setup router
	command -v wrk >/dev/null || apt-get install -y wrk
	$(PY) -m bench.overhead

# `moe serve` to the first 200 from /readyz, five starts → bench/results/cold_start.json.
cold-start: setup router
	$(PY) -m bench.cold_start

# Mutation testing of the parts whose tests need no server (scope in bench/mutation.py): mutants/ is scratch,
# the report goes to bench/results/mutation.{json,md}. About 5 minutes on 2 cores.
mutation: setup
	$(PY) -m bench.mutation
