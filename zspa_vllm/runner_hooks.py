"""vLLM 0.32's model runners call ``recompute_mrope_positions`` only while their
``is_multimodal_pruning_enabled`` is set, which needs ``video_pruning_rate`` (GPU) or
never happens (the CPU runner). ``install_runner_hooks`` (run from an M-RoPE pruning
model's constructor, inside the worker's load_model) turns it on for models reporting
``zspa_prunes_media``. Every hook keeps ``functools.wraps``, so the pinned-signature
tests (tests/unit/test_upstream_hooks.py) still see upstream's signature.
"""

from __future__ import annotations

import functools
import sys

# The vLLM series whose runner internals the hooks below are written against.
HOOKED_VLLM_SERIES = "0.32."

_hooks_installed = False


def install_runner_hooks() -> None:
    """Make vLLM 0.32's model runners call recompute_mrope_positions for our models."""
    global _hooks_installed
    if _hooks_installed:
        return
    import vllm

    if not vllm.__version__.startswith(HOOKED_VLLM_SERIES):
        raise RuntimeError(f"zspa-vllm: runner hooks are written for vLLM {HOOKED_VLLM_SERIES}x, found {vllm.__version__}")

    # V1 runners (GPUModelRunner and CPUModelRunner, which inherits this method): the
    # CPU runner never sets is_multimodal_pruning_enabled, the GPU one only for video_pruning_rate.
    runner_module = sys.modules.get("vllm.v1.worker.gpu_model_runner")
    if runner_module is not None:
        runner_cls = runner_module.GPUModelRunner
        gather = runner_cls._gather_mm_embeddings

        @functools.wraps(gather)  # keeps the upstream signature visible (tests/unit/test_upstream_hooks.py)
        def _gather_mm_embeddings(self, *args, **kwargs):
            if not self.is_multimodal_pruning_enabled and getattr(self.get_model(), "zspa_prunes_media", False):
                self.is_multimodal_pruning_enabled = True
            return gather(self, *args, **kwargs)

        runner_cls._gather_mm_embeddings = _gather_mm_embeddings

    # V2 runner (vllm/v1/worker/gpu/): creates its M-RoPE pruner only for video_pruning_rate.
    if "vllm.v1.worker.gpu.model_runner" in sys.modules:
        from vllm.v1.worker.gpu.model_states import mm_pruning

        create = mm_pruning.maybe_create_mm_pruner

        @functools.wraps(create)
        def maybe_create_mm_pruner(model_config, model, rope_state, encoder_cache):
            pruner = create(model_config, model, rope_state, encoder_cache)
            if pruner is None and getattr(model, "zspa_prunes_media", False) and None not in (rope_state, encoder_cache):
                # the width strip() cuts to: ours, which keeps Qwen3-VL's deepstack columns
                # (model_config.get_inputs_embeds_size() would cut them off)
                pruner = mm_pruning.MultiModalPruner(model, rope_state, encoder_cache, model._zspa_embedding_width())
            return pruner

        mm_pruning.maybe_create_mm_pruner = maybe_create_mm_pruner
        default = sys.modules.get("vllm.v1.worker.gpu.model_states.default")
        if default is not None:  # already bound the original by name
            default.maybe_create_mm_pruner = maybe_create_mm_pruner
    _hooks_installed = True
