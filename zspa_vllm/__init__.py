"""zspa-vllm: prompt-aware visual token pruning (ZSPAPrune) for vLLM."""

__version__ = "0.1.0"

# vLLM architecture name -> our override, as "module:Class" so nothing imports until used
MODEL_OVERRIDES = {
    "LlavaForConditionalGeneration": "zspa_vllm.models.llava:ZspaLlavaForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "zspa_vllm.models.qwen2_5_vl:ZspaQwen2_5_VLForConditionalGeneration",
    "LlavaNextForConditionalGeneration": "zspa_vllm.models.llava_next:ZspaLlavaNextForConditionalGeneration",
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
    from vllm import ModelRegistry

    from zspa_vllm.compat import check_vllm_version

    check_vllm_version()
    for architecture, target in MODEL_OVERRIDES.items():
        ModelRegistry.register_model(architecture, target)
    _registered = True
