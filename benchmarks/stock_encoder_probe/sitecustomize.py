"""Counts the vision-encoder runs of a stock vLLM server (plugins off) for the chat
benchmark; stock vLLM exports no such count.

``chat_workloads.stock_probe_env`` puts this folder first on the server's PYTHONPATH, so
every process of the server imports it at start-up, vLLM's workers included. With
``ZSPA_BENCH_ENCODER_RUNS=<dir>`` set, the method each model runner encodes a step's
multimodal items with is wrapped once its module is imported (V1's
``GPUModelRunner._execute_mm_encoder``, Model Runner V2's
``EncoderRunner.execute_mm_encoder``): each call adds the number of encoder outputs it
returns (one per item the encoder ran on) to ``<dir>/<pid>.json``. Tied to vLLM 0.32's
names: if one moves, nothing is counted and the benchmark stops with an error."""

import importlib.abc
import importlib.machinery
import json
import os
import sys

_DIRECTORY = os.environ.get("ZSPA_BENCH_ENCODER_RUNS")
# module -> (class, method) that runs the vision encoder on a step's scheduled items
_ENCODES = {
    "vllm.v1.worker.gpu_model_runner": ("GPUModelRunner", "_execute_mm_encoder"),
    "vllm.v1.worker.gpu.mm.encoder_runner": ("EncoderRunner", "execute_mm_encoder"),
}
_counts = {"runs": 0, "calls": 0}  # this process's, over both runners


def _count_outputs(cls, name: str) -> None:
    encode = getattr(cls, name)

    def counted(self, *args, **kwargs):
        outputs = encode(self, *args, **kwargs)
        _counts["runs"] += len(outputs)
        _counts["calls"] += 1
        path = os.path.join(_DIRECTORY, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as file:
            json.dump(_counts, file)
        os.replace(path + ".tmp", path)  # the benchmark never reads half a file
        return outputs

    setattr(cls, name, counted)


class _WrapAfterImport(importlib.abc.MetaPathFinder):
    """Finds a runner module like the path finder would, and wraps its method once the
    module has run."""

    def find_spec(self, name, path, target=None):
        if name not in _ENCODES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            cls, method = _ENCODES[name]
            _count_outputs(getattr(module, cls), method)

        spec.loader.exec_module = exec_and_wrap
        return spec


if _DIRECTORY:
    os.makedirs(_DIRECTORY, exist_ok=True)
    sys.meta_path.insert(0, _WrapAfterImport())
