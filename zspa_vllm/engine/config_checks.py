"""Engine settings under which pruning would hand the prefill wrong tokens, refused when
vLLM builds its config (in the process that starts the engine, before any worker); the
same hook installs the scheduler that charges unpruned encoder work
(``zspa_vllm.engine.encoder_budget``).

vLLM calls ``MODELS_CONFIG_MAP[architecture].verify_and_update_config(vllm_config)`` from
``VllmConfig.__post_init__``; ``install`` puts our check there for every architecture
the plugin overrides, in front of vLLM's own entry (which it still calls).
"""

from __future__ import annotations

from collections.abc import Iterable

from zspa_vllm import envs
from zspa_vllm.engine import encoder_budget

# vLLM's own entries (or None) for the architectures we took over, by architecture.
_UPSTREAM: dict[str, type | None] = {}

_DISABLE = "or leave the zspa plugin out of VLLM_PLUGINS to serve unpruned"


def refusal(vllm_config) -> str | None:
    """Why pruning cannot be served under ``vllm_config``, or None."""
    try:
        envs.check()  # a bad ZSPA_* value fails here, not at the first image in a worker
    except ValueError as error:
        return f"zspa-vllm: {error}"
    model_config = vllm_config.model_config
    arch = model_config.architecture
    if model_config.uses_mrope:
        pp = vllm_config.parallel_config.pipeline_parallel_size
        if pp > 1:
            return (
                f"zspa-vllm cannot serve {arch} with pipeline_parallel_size={pp}: pruned image tokens "
                "keep their M-RoPE positions only on the first pipeline stage in vLLM 0.32, so later "
                f"stages would see them at wrong positions; use tensor parallelism instead, {_DISABLE}"
            )
        mm_config = model_config.multimodal_config
        if mm_config is not None and mm_config.is_multimodal_pruning_enabled():
            return (
                f"zspa-vllm cannot serve {arch} with video_pruning_rate={mm_config.video_pruning_rate}: "
                "vLLM's video pruning (EVS) and zspa's pruning both write position channels "
                f"into the same embeddings and would both prune one video; unset video_pruning_rate, {_DISABLE}"
            )
    lora_config = vllm_config.lora_config
    if lora_config is not None and lora_config.enable_tower_connector_lora:
        return (
            f"zspa-vllm cannot serve {arch} with enable_tower_connector_lora: vLLM sizes the vision "
            "tower's LoRA mapping by the (pruned) placeholder count, while the tower sees every "
            f"patch; switch tower LoRA off, {_DISABLE}"
        )
    return None


class ZspaConfigChecks:
    """A ``VerifyAndUpdateConfig`` for vLLM's ``MODELS_CONFIG_MAP``."""

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        reason = refusal(vllm_config)
        if reason is not None:
            raise ValueError(reason)
        encoder_budget.install(vllm_config)
        upstream = _UPSTREAM.get(vllm_config.model_config.architecture)
        if upstream is not None:
            upstream.verify_and_update_config(vllm_config)

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        upstream = _UPSTREAM.get(model_config.architecture)
        if upstream is not None:
            upstream.verify_and_update_model_config(model_config)


def install(architectures: Iterable[str]) -> None:
    """Put the checks in front of vLLM's entries for ``architectures`` (re-entrant)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    for arch in architectures:
        current = MODELS_CONFIG_MAP.get(arch)
        if current is not ZspaConfigChecks:
            _UPSTREAM[arch] = current
            MODELS_CONFIG_MAP[arch] = ZspaConfigChecks
