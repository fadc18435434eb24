"""vLLM's model runners call ``recompute_mrope_positions`` only while M-RoPE pruning is
enabled, which needs ``video_pruning_rate`` (V1 GPU runner, Model Runner V2) or never
happens (the V1 CPU runner). ``install_runner_hooks`` (run from an M-RoPE pruning model's
constructor, inside the worker's load_model) turns it on for models reporting
``zspa_prunes_media``. Every hook keeps ``functools.wraps``, so the pinned sources
(tests/upstream) still describe what runs.
"""

from __future__ import annotations

import functools
import importlib
import sys

from zspa_vllm import vllm_versions

_hooks_installed = False


def install_runner_hooks() -> None:
    """Make vLLM's model runners call recompute_mrope_positions for our models."""
    global _hooks_installed
    if _hooks_installed:
        return
    vllm_versions.check_vllm_version()

    # V1 runners (GPUModelRunner and CPUModelRunner, which inherits this method; gone in
    # 0.34): the CPU runner never sets is_multimodal_pruning_enabled, the GPU one only
    # for video_pruning_rate.
    runner_module = sys.modules.get("vllm.v1.worker.gpu_model_runner")
    if runner_module is not None:
        runner_cls = runner_module.GPUModelRunner
        gather = runner_cls._gather_mm_embeddings

        @functools.wraps(gather)  # keeps the upstream signature visible
        def _gather_mm_embeddings(self, *args, **kwargs):
            if not self.is_multimodal_pruning_enabled and getattr(self.get_model(), "zspa_prunes_media", False):
                self.is_multimodal_pruning_enabled = True
            return gather(self, *args, **kwargs)

        runner_cls._gather_mm_embeddings = _gather_mm_embeddings

    # Model Runner V2: creates its M-RoPE pruner only for video_pruning_rate. Each runner
    # of the release (vllm_versions.PRUNER_FACTORIES) whose model states are loaded.
    for runner_module, factory_module, state_module in vllm_versions.since(vllm_versions.PRUNER_FACTORIES):
        if runner_module in sys.modules:
            _hook_pruner_factory(importlib.import_module(factory_module), sys.modules.get(state_module))
    _hooks_installed = True


def _hook_pruner_factory(mm_pruning, model_states) -> None:
    create = mm_pruning.maybe_create_mm_pruner

    @functools.wraps(create)
    def maybe_create_mm_pruner(model_config, model, rope_state, encoder_cache):
        pruner = create(model_config, model, rope_state, encoder_cache)
        if pruner is None and getattr(model, "zspa_prunes_media", False) and None not in (rope_state, encoder_cache):
            # the width strip() cuts to: ours, which keeps Qwen3-VL's deepstack columns
            # (model_config.get_inputs_embeds_size() would cut them off)
            pruner = _unpruned_steps_untouched(mm_pruning.MultiModalPruner)(
                model, rope_state, encoder_cache, model._zspa_embedding_width()
            )
        return pruner

    mm_pruning.maybe_create_mm_pruner = maybe_create_mm_pruner
    if model_states is not None:  # already bound the original by name
        model_states.maybe_create_mm_pruner = maybe_create_mm_pruner


_PRUNERS: dict[type, type] = {}


def _unpruned_steps_untouched(pruner_cls: type) -> type:
    """vLLM's pruner, passing a step none of whose rows carry our position columns
    straight through, as stock vLLM (no pruner) does: its pass would re-derive the same
    positions, with a device sync per request."""
    if pruner_cls not in _PRUNERS:

        def recompute(self, mm_embeds, input_batch, req_states):
            if all(mm.shape[-1] == self.inputs_embeds_size for mm in mm_embeds):
                return mm_embeds
            return pruner_cls.recompute(self, mm_embeds, input_batch, req_states)

        _PRUNERS[pruner_cls] = type(f"Zspa{pruner_cls.__name__}", (pruner_cls,), {"recompute": recompute, "__module__": __name__})
    return _PRUNERS[pruner_cls]
