"""Probes for a benchmarked server, switched on by environment variables; the benchmark
puts this folder first on the server's PYTHONPATH, so every process of the server imports
this at start-up (vLLM's spawned engine processes too):

- ``ZSPA_BENCH_ENCODER_RUNS=<dir>``: counts stock vLLM's vision-encoder runs
  (``encoder_runs.py``; benchmarks/chat_workloads.py);
- ``ZSPA_BENCH_ENGINE_PROBE=<dir>``: times the plugin's engine-side code and vLLM's steps
  around it (``engine_times.py``; benchmarks/plugin_cost.py).
"""

import os

if os.environ.get("ZSPA_BENCH_ENCODER_RUNS"):
    import encoder_runs

    encoder_runs.install(os.environ["ZSPA_BENCH_ENCODER_RUNS"])
if os.environ.get("ZSPA_BENCH_ENGINE_PROBE"):
    import engine_times

    engine_times.install(os.environ["ZSPA_BENCH_ENGINE_PROBE"])
