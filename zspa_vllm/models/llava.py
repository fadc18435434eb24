"""LLaVA-1.5 (``LlavaForConditionalGeneration``) with ZSPAPrune.

1-D RoPE: the kept tokens simply take consecutive positions, nothing else changes.
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
from vllm.multimodal.processing import PromptReplacement

from zspa_vllm.model import PruningModelMixin
from zspa_vllm.processor import PruningProcessorMixin
from zspa_vllm.query import LLAVA_USER_TURN


class PrunedLlavaPlaceholders:
    """vLLM's one LLaVA image replacement (LLaVA-1.5 and LLaVA-NeXT), with the pruned
    count; mix in before a ``BaseLlavaMultiModalProcessor``. Families implement
    ``_zspa_pixel_counts`` (tokens per image of pixel inputs)."""

    def _zspa_placeholder_id(self, modality: str) -> int:
        return self.info.get_hf_config().image_token_index

    def _zspa_visual_counts(self, processed, modality: str):
        if "image_embeds" in processed:  # precomputed: one (n, d) tensor per image
            return [len(embeds) for embeds in processed["image_embeds"]]
        return self._zspa_pixel_counts(processed)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        (update,) = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        token_id = self.info.get_hf_config().image_token_index

        def pruned_replacement(item_idx: int):
            full = update.replacement(item_idx) if callable(update.replacement) else update.replacement
            return [token_id] * self._zspa_placeholder_count(len(full), hf_processor_mm_kwargs)

        return [PromptReplacement(modality="image", target=update.target, replacement=pruned_replacement)]


class ZspaLlavaMultiModalProcessor(PruningProcessorMixin, PrunedLlavaPlaceholders, LlavaMultiModalProcessor):
    QUERY_PATTERN = LLAVA_USER_TURN  # "USER: <image>\n{question} ASSISTANT:"

    def _zspa_pixel_counts(self, processed):
        return [int(self.info.get_num_image_tokens(image_width=1, image_height=1))] * len(
            processed["pixel_values"]
        )


def _build_processor(info, dummy_inputs):
    if isinstance(info, LlavaProcessingInfo):
        return ZspaLlavaMultiModalProcessor(info, dummy_inputs)
    return _build_llava_or_pixtral_hf_processor(info, dummy_inputs)  # Pixtral-HF: stock


@MULTIMODAL_REGISTRY.register_processor(
    _build_processor, info=_build_llava_or_pixtral_hf_info, dummy_inputs=LlavaDummyInputsBuilder
)
class ZspaLlavaForConditionalGeneration(PruningModelMixin, LlavaForConditionalGeneration):
    """vLLM's LLaVA with ZSPAPrune between the projector and the prefill sequence."""
