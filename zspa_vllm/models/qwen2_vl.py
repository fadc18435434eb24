"""Qwen2-VL (``Qwen2VLForConditionalGeneration``) with ZSPAPrune, for images.

Everything but the class names is shared with the other Qwen families
(``zspa_vllm.models.qwen``, positions in ``zspa_vllm.mrope``). Videos are never pruned:
only image items get our per-image fields, so a video (alone, or next to pruned images
in one prompt) takes vLLM's own path and keeps every token.
"""

from __future__ import annotations

from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.models.qwen import QwenPruningModelMixin, QwenPruningProcessorMixin
from zspa_vllm.processor import PruningInfoMixin


class ZspaQwen2VLMultiModalProcessor(QwenPruningProcessorMixin, Qwen2VLMultiModalProcessor):
    pass


class ZspaQwen2VLProcessingInfo(PruningInfoMixin, Qwen2VLProcessingInfo):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    ZspaQwen2VLMultiModalProcessor,
    info=ZspaQwen2VLProcessingInfo,
    dummy_inputs=Qwen2VLDummyInputsBuilder,
)
class ZspaQwen2VLForConditionalGeneration(QwenPruningModelMixin, Qwen2VLForConditionalGeneration):
    """vLLM's Qwen2-VL with ZSPAPrune on images and M-RoPE positions kept."""
