"""LLaVA-1.5 (``LlavaForConditionalGeneration``) with ZSPAPrune.

Each image is one run of ``<image>`` tokens (``zspa_vllm.frontend.one_run``); 1-D RoPE: the kept
tokens simply take consecutive positions, nothing else changes.
"""

from __future__ import annotations

from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
    _build_llava_or_pixtral_hf_info,
    _build_llava_or_pixtral_hf_processor,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.worker.model import PruningModelMixin
from zspa_vllm.frontend.one_run import OneRunProcessorMixin
from zspa_vllm.core.query import LLAVA_USER_TURN


class ZspaLlavaMultiModalProcessor(OneRunProcessorMixin, LlavaMultiModalProcessor):
    QUERY_PATTERN = LLAVA_USER_TURN  # "USER: <image>\n{question} ASSISTANT:"


def _build_processor(info, dummy_inputs):
    if isinstance(info, LlavaProcessingInfo):
        return ZspaLlavaMultiModalProcessor(info, dummy_inputs)
    return _build_llava_or_pixtral_hf_processor(info, dummy_inputs)  # Pixtral-HF: stock


@MULTIMODAL_REGISTRY.register_processor(
    _build_processor, info=_build_llava_or_pixtral_hf_info, dummy_inputs=LlavaDummyInputsBuilder
)
class ZspaLlavaForConditionalGeneration(PruningModelMixin, LlavaForConditionalGeneration):
    """vLLM's LLaVA with ZSPAPrune between the projector and the prefill sequence."""
