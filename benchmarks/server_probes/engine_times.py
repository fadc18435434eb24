"""Times the plugin's engine-side code, and vLLM's own steps around it, in every process
of a server benchmarks/plugin_cost.py starts (the engine core and its workers, which the
API-server probe of that file does not reach).

plugin_cost sets ``ZSPA_BENCH_ENGINE_PROBE=<dir>`` (see sitecustomize.py). Each function in ``TARGETS`` is wrapped once its module has run; each call adds
its **own** wall time (``time.perf_counter``: the engine core runs one step at a time, so
its wall time is what the step waits for) less the time of the timed calls inside it, to
its label; each process writes its totals to ``<dir>/<pid>.json`` twice a second.
Wall time, not thread CPU time as in the API server: a worker's tensor work runs on OpenMP
threads the calling thread's CPU time would not see.
"""

import functools
import json
import os
import threading
import time

from after_import import after_import

OURS, VLLM = "ours", "vllm"
_ENCODER = "vision encoder + projector (the family's embed_multimodal)"
# module -> [(qualified name, label, whose)]; vLLM's are timed on the stock server too
TARGETS = {
    "vllm.v1.core.sched.scheduler": [
        ("Scheduler.schedule", "schedule a step", VLLM),
        ("Scheduler._try_schedule_encoder_inputs", "the step's encoder-input check", VLLM),
    ],
    "zspa_vllm.engine.encoder_budget": [
        ("ChargeUnprunedMixin._try_schedule_encoder_inputs", "scheduler: charge unpruned tokens", OURS),
    ],
    "zspa_vllm.worker.model": [
        ("PruningModelMixin.embed_multimodal", "worker: embed_multimodal (fields, encoder-output cache)", OURS),
        ("PruningModelMixin._zspa_prune", "worker: around the selection (query embedding, kept rows)", OURS),
    ],
    "zspa_vllm.core.selection": [("selection_order_with_core", "worker: selection (selection_order_with_core)", OURS)],
    "zspa_vllm.worker.mrope": [
        ("PrunedMropeMixin.embed_multimodal", "worker: M-RoPE grids per call", OURS),
        ("PrunedMropeMixin.get_mrope_input_positions", "worker: M-RoPE positions, unpruned rule", OURS),
        ("PrunedMropeMixin.recompute_mrope_positions", "worker: M-RoPE recompute per request and step", OURS),
    ],
    # vLLM's EVS position pass: it runs for our M-RoPE models only because the plugin turns it on
    "vllm.v1.worker.gpu.model_states.mm_pruning": [
        ("MultiModalPruner.recompute", "worker: vLLM's M-RoPE pruner pass (on for our models)", OURS),
    ],
    # the workers' counters for /metrics (encoder-output cache; phase timings when on)
    "zspa_vllm.core.stats_files": [("publish", "worker: counter files for /metrics", OURS)],
    "vllm.model_executor.models.llava": [("LlavaForConditionalGeneration.embed_multimodal", _ENCODER, VLLM)],
    "vllm.model_executor.models.qwen2_5_vl": [
        ("Qwen2_5_VLForConditionalGeneration.embed_multimodal", _ENCODER, VLLM),
        ("Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions", "M-RoPE positions", VLLM),
    ],
}

_totals = {"own_s": {}, "calls": {}, "whose": {}}
_stacks = threading.local()
_dumping_pid = None
_directory = None
_lock = threading.Lock()


def _dump_forever(pid: int) -> None:
    path = os.path.join(_directory, f"{pid}.json")
    while True:
        time.sleep(0.5)
        with _lock:
            text = json.dumps(_totals)
        with open(path + ".tmp", "w") as file:
            file.write(text)
        os.replace(path + ".tmp", path)  # the benchmark never reads half a file


def _start_dumping() -> None:
    """One writer thread per process; a forked child starts its own, from zero."""
    global _dumping_pid, _totals
    if _dumping_pid == os.getpid():
        return
    if _dumping_pid is not None:  # forked: the parent's totals are the parent's
        _totals = {"own_s": {}, "calls": {}, "whose": {}}
    _dumping_pid = os.getpid()
    threading.Thread(target=_dump_forever, args=(_dumping_pid,), daemon=True).start()


def _timed(function, label: str, whose: str):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        _start_dumping()
        stack = _stacks.__dict__.setdefault("open", [])
        stack.append(0.0)  # time of the timed calls inside this one
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            inner = stack.pop()
            if stack:
                stack[-1] += elapsed
            with _lock:
                _totals["own_s"][label] = _totals["own_s"].get(label, 0.0) + elapsed - inner
                _totals["calls"][label] = _totals["calls"].get(label, 0) + 1
                _totals["whose"][label] = whose

    return timed


def _wrap(module) -> None:
    for qualname, label, whose in TARGETS[module.__name__]:
        owner_name, _, name = qualname.rpartition(".")
        owner = getattr(module, owner_name, None) if owner_name else module
        if owner is not None and name in vars(owner):
            setattr(owner, name, _timed(vars(owner)[name], label, whose))


def install(directory: str) -> None:
    global _directory
    _directory = directory
    os.makedirs(directory, exist_ok=True)
    after_import({name: _wrap for name in TARGETS})
