# The two commands a fresh clone needs: `make demo` and `make test`. Each installs what it needs itself.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)

.DEFAULT_GOAL := help

.PHONY: help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.installed: requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

.PHONY: venv
venv: $(VENV)/.installed  ## make .venv with maturin, pytest and the Python deps

.PHONY: build
build: venv  ## build the extension (release) into .venv
	$(VENV)/bin/maturin develop --release -q

.PHONY: lint
lint: build  ## mypy --strict on the package and a typed example; stubtest checks the .pyi against the extension
	$(PY) -m mypy --strict python/holysheep tests/typed_usage.py
	$(PY) -m mypy.stubtest holysheep._holysheep

.PHONY: redis-server
redis-server:  ## install Debian's redis-server and redis-sentinel for the Redis backend's tests, when missing
	@command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server redis-sentinel >/dev/null; }

.PHONY: test
test: build lint redis-server  ## cargo test, the lint, pytest (the Redis tests start their own redis-server), the oldest openai
	cargo test -q
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-openai-oldest

# --- the drop-in clients against the oldest openai the `openai` extra claims, in a venv of its own ---
OLDEST_VENV := .venv-openai-oldest
OLDEST_TESTS := tests/test_client.py tests/test_cli_check.py tests/test_demo.py tests/test_mock_gateway.py tests/test_coalesce.py tests/test_models.py

$(OLDEST_VENV)/.installed: tests/requirements-openai-oldest.txt
	python3 -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q -r tests/requirements-openai-oldest.txt
	touch $@

.PHONY: test-openai-oldest
test-openai-oldest: build $(OLDEST_VENV)/.installed  ## the clients' tests on openai 1.x (httpx), with the extension just built
	PYTHONPATH=python $(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider $(OLDEST_TESTS)

.PHONY: demo
demo: build  ## the main job: a RAG batch through holysheep and through the bare SDK against a MockGateway; table + PNG
	$(PY) -m holysheep demo

.PHONY: bench
bench: build  ## criterion benches for the core, the Python benches beside the peers, the gateway under wrk
	cargo bench --bench core
	$(PY) benches/python/run.py
	$(MAKE) --no-print-directory bench-gateway
	$(MAKE) --no-print-directory bench-resilience
	$(MAKE) --no-print-directory bench-redis
	$(MAKE) --no-print-directory bench-openai
	$(MAKE) --no-print-directory bench-engine
	$(MAKE) --no-print-directory bench-preview
	$(PY) benches/python/bench_adapters.py

.PHONY: bench-preview
bench-preview: build  ## hs.preview: an hour of traffic at 50 requests/s on the virtual clock, wall time
	$(PY) benches/preview.py

.PHONY: soak
soak: build  ## minutes of mixed openai calls (streams, threads, faults) at the gateway's limits: leaks, 429s (SOAK_MINUTES=10)
	$(PY) benches/openai/soak.py --minutes $(or $(SOAK_MINUTES),10)

.PHONY: bench-gateway
bench-gateway: build  ## requests/s of the MockGateway under wrk (installs wrk when missing)
	PY=$(PY) bash benches/gateway/run.sh

.PHONY: bench-openai
bench-openai: build  ## the openai wrapper against MockGateway: goodput beside the bare SDK and a deque limiter; following the server; overhead (plain and instrumented); coalescing
	$(PY) benches/openai/goodput.py
	$(PY) benches/openai/following.py
	$(PY) benches/openai/overhead.py
	$(PY) benches/openai/overhead.py --instrumented
	$(PY) benches/openai/coalesce.py

# --- resilience benches: the peers (tenacity, backoff, pybreaker, circuitbreaker) get their own venv ---
PEERS_VENV := benches/python/.venv-peers

$(PEERS_VENV)/.installed: benches/python/requirements-resilience.txt
	python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q -r benches/python/requirements-resilience.txt
	touch $@

.PHONY: bench-resilience
bench-resilience: $(PEERS_VENV)/.installed  ## retry/breaker: criterion for the core, then ns per decorated call beside the peers
	cargo bench --bench resilience
	VIRTUAL_ENV=$(abspath $(PEERS_VENV)) $(PEERS_VENV)/bin/maturin develop --release -q
	$(PEERS_VENV)/bin/python benches/python/bench_resilience.py

BENCH_REDIS_VENV := benches/redis/.venv

$(BENCH_REDIS_VENV)/.installed: benches/redis/requirements.txt
	python3 -m venv $(BENCH_REDIS_VENV)
	$(BENCH_REDIS_VENV)/bin/pip install -q -r benches/redis/requirements.txt
	touch $@

.PHONY: bench-redis
bench-redis: build redis-server $(BENCH_REDIS_VENV)/.installed  ## decisions/s and latency in Redis beside limits, PyrateLimiter, throttled-py
	$(PY) benches/redis/run.py --peers-python $(BENCH_REDIS_VENV)/bin/python

BENCH_ENGINE_VENV := benches/engine/.venv

$(BENCH_ENGINE_VENV)/.installed: benches/engine/requirements.txt
	python3 -m venv $(BENCH_ENGINE_VENV)
	$(BENCH_ENGINE_VENV)/bin/pip install -q -r benches/engine/requirements.txt
	touch $@

.PHONY: bench-engine
bench-engine: build $(BENCH_ENGINE_VENV)/.installed  ## the batch engine beside AsyncOpenAI, a cookbook-style aiohttp loop and wrk; strict limits; RSS for 1,000,000 lines
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(PY) benches/engine/run.py --peers-python $(BENCH_ENGINE_VENV)/bin/python

.PHONY: clean
clean:  ## remove build output and the venv
	cargo clean
	rm -rf $(VENV)
