"""Counts the vision-encoder runs of a stock vLLM server (plugins off) for the chat
benchmark; stock vLLM exports no such count.

``chat_workloads.stock_probe_env`` sets ``ZSPA_BENCH_ENCODER_RUNS=<dir>`` (see
sitecustomize.py): the method each model runner encodes a step's multimodal items with
is wrapped once its module is imported (V1's ``GPUModelRunner._execute_mm_encoder``,
Model Runner V2's ``EncoderRunner.execute_mm_encoder``): each call adds the number of
encoder outputs it returns (one per item the encoder ran on) to ``<dir>/<pid>.json``.
Tied to vLLM 0.32's names: if one moves, nothing is counted and the benchmark stops with
an error."""

import json
import os

from after_import import after_import

# module -> (class, method) that runs the vision encoder on a step's scheduled items
_ENCODES = {
    "vllm.v1.worker.gpu_model_runner": ("GPUModelRunner", "_execute_mm_encoder"),
    "vllm.v1.worker.gpu.mm.encoder_runner": ("EncoderRunner", "execute_mm_encoder"),
}
_counts = {"runs": 0, "calls": 0}  # this process's, over both runners


def _count_outputs(cls, name: str, directory: str) -> None:
    encode = getattr(cls, name)

    def counted(self, *args, **kwargs):
        outputs = encode(self, *args, **kwargs)
        _counts["runs"] += len(outputs)
        _counts["calls"] += 1
        path = os.path.join(directory, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as file:
            json.dump(_counts, file)
        os.replace(path + ".tmp", path)  # the benchmark never reads half a file
        return outputs

    setattr(cls, name, counted)


def install(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)

    def hook(module):
        cls, method = _ENCODES[module.__name__]
        _count_outputs(getattr(module, cls), method, directory)

    after_import({name: hook for name in _ENCODES})
