"""zspa-vllm: prompt-aware visual token pruning (ZSPAPrune) for vLLM."""

import os

__version__ = "0.1.0"

# vLLM architecture name -> our override, as "module:Class" so nothing imports until used
MODEL_OVERRIDES = {
    "LlavaForConditionalGeneration": "zspa_vllm.models.llava:ZspaLlavaForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "zspa_vllm.models.qwen2_5_vl:ZspaQwen2_5_VLForConditionalGeneration",
    "LlavaNextForConditionalGeneration": "zspa_vllm.models.llava_next:ZspaLlavaNextForConditionalGeneration",
    "Qwen2VLForConditionalGeneration": "zspa_vllm.models.qwen2_vl:ZspaQwen2VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "zspa_vllm.models.qwen3_vl:ZspaQwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration": "zspa_vllm.models.qwen3_vl_moe:ZspaQwen3VLMoeForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration": "zspa_vllm.models.qwen3_5:ZspaQwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration": "zspa_vllm.models.qwen3_5_moe:ZspaQwen3_5MoeForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration": "zspa_vllm.models.llava_onevision:ZspaLlavaOnevisionForConditionalGeneration",
    "Gemma3ForConditionalGeneration": "zspa_vllm.models.gemma3:ZspaGemma3ForConditionalGeneration",
    "InternVLForConditionalGeneration": "zspa_vllm.models.internvl:ZspaInternVLForConditionalGeneration",
}

# Architectures whose images are NOT one run of embed positions (zspa_vllm.frontend.one_run), so
# that a shorter placeholder run cannot be laid out before the selection: refused with
# this reason when a request asks to prune them (they are served unpruned otherwise).
NOT_ONE_RUN = {
    "PixtralForConditionalGeneration": "its image rows are separated by [IMG_BREAK] tokens (inserted by mistral-common before vLLM sees the prompt)",
    "Llama4ForConditionalGeneration": "its image tiles are separated by tile x/y separator tokens, then a global view",
    "Idefics3ForConditionalGeneration": "its image tiles are separate runs, each after its <row_i_col_j> text",
    "MolmoForCausalLM": "vLLM inserts its image tokens with an <im_col> token ending every row",
}

_registered = False


def register() -> None:
    """vLLM general-plugin entry point (``vllm.general_plugins``: ``zspa``).

    vLLM calls this in every process it starts; it must be cheap and re-entrant.
    Imports stay inside so that importing zspa_vllm never imports vLLM.
    """
    global _registered
    if _registered:
        return
    from zspa_vllm.vllm_versions import logger, unsupported_reason

    reason = unsupported_reason()
    if reason is not None:  # stand aside: never break a vLLM we are not written for
        logger.warning(reason)
        _registered = True
        return
    from vllm import ModelRegistry

    from zspa_vllm.engine import config_checks
    from zspa_vllm.envs import STATS_DIR

    for architecture, target in MODEL_OVERRIDES.items():
        ModelRegistry.register_model(architecture, target)
    config_checks.install(MODEL_OVERRIDES)
    # The first process of a server (it registers before it starts the engine's) picks
    # where the workers publish their encoder-cache counters; children inherit it.
    if not os.environ.get(STATS_DIR):
        from zspa_vllm.core.stats_files import new_directory

        os.environ[STATS_DIR] = new_directory()
    _registered = True
