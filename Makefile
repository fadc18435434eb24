# `make test` goes from a bare machine to a full test run (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

SOAK_SECONDS ?= 600
VLLM ?=

.PHONY: check-upstream check-processor soak env demo test test-unit test-engine test-server bench-select bench-serve bench-cost bench-video bench-chat fixtures demo-model eval-demo clean

env:  ## create/refresh .venv (seconds when nothing changed)
	VENV=$(VENV) bash scripts/bootstrap.sh

demo: env  ## start zspa-serve with the demo model, ask it held-out questions unpruned and pruned, draw what one kept
	$(PY) scripts/demo.py

test: env  ## the whole suite
	$(PY) scripts/run_pytest.py $(PYTEST_ARGS)

test-unit: env  ## the fast tests only (no vLLM engine, no server)
	$(PY) scripts/run_pytest.py -m "not engine and not server" $(PYTEST_ARGS)

test-engine: env  ## the tests that start a real vLLM engine
	$(PY) scripts/run_pytest.py -m engine $(PYTEST_ARGS)

test-server: env  ## the tests against a real zspa-serve process
	$(PY) scripts/run_pytest.py -m server $(PYTEST_ARGS)

bench-select: env  ## time the selection kernel at real model sizes
	$(PY) benchmarks/select_bench.py --methods zspa,divprune

BENCH_FAMILIES ?= qwen2.5-vl
bench-serve: env  ## stock vLLM vs zspa-serve vs the ideal on a proportional random-weight model, concurrency 1-64 (about 40 min per family on 2 CPUs; BENCH_FAMILIES=qwen2.5-vl,llava-1.5,llava-next for more)
	$(PY) benchmarks/serve_bench.py --families $(BENCH_FAMILIES) --scale 0.125 --concurrency 1,8,32,64 --requests 16 --repeats 2 --warmup 1

bench-cost: env  ## what the plugin's own code costs a request it does not prune, hook by hook, vs stock vLLM (about 20 min on 2 CPUs)
	$(PY) benchmarks/plugin_cost.py --families llava-1.5,qwen2.5-vl --scale 0.125 --concurrency 1,8 --requests 12 --repeats 3 --warmup 1

bench-video: env  ## a video workload: stock vLLM vs zspa-serve vs vLLM's EVS, Qwen2.5-VL (about 20 min on 2 CPUs)
	$(PY) benchmarks/serve_bench.py --workload video --scale 0 --families qwen2.5-vl --requests 8 --concurrency 4 --repeats 3 --warmup 1

bench-chat: env  ## multi-turn chat and same-image workloads: stock vLLM vs zspa-serve (about 60 min on 2 CPUs)
	$(PY) benchmarks/serve_bench.py --workload chat --scale 0 --repeats 3 --warmup 1

check-processor: env  ## our processors on another vLLM release's API-server code, on this CPU, against the installed one (builds a 6.6 GB environment once): make check-processor VLLM=0.34.0
	$(PY) scripts/check_processor.py --vllm $(or $(VLLM),0.34.0)

soak: env  ## a mixed-load soak against zspa-serve --demo (SOAK_SECONDS, default 600): fails on any 5xx, hang, wrong kept count, canary drift or memory growth after warm-up
	$(PY) benchmarks/soak.py --seconds $(SOAK_SECONDS)

check-upstream: env  ## which of the plugin's reliances on vLLM internals a release changed, from its sources (no install): make check-upstream VLLM=0.35.0
	@test -n "$(VLLM)" || { echo "usage: make check-upstream VLLM=X.Y.Z"; exit 2; }
	ZSPA_UPSTREAM_VLLM=$(VLLM) $(PY) -m pytest -q -p no:cacheprovider -o addopts="" --tb=line -rf tests/unit/test_upstream_sources.py

fixtures: env  ## regenerate the tiny random-weight models under tests/fixtures/models
	$(PY) scripts/make_fixtures.py

demo-model: env  ## retrain the demo model into zspa_demo/demo_model (about 20 min on one CPU core, deterministic)
	$(PY) scripts/train_demo_model.py

eval-demo: env  ## the demo model's accuracy against keep rate per method -> benchmarks/results/demo_accuracy (about 10 min)
	$(PY) scripts/eval_demo_model.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
