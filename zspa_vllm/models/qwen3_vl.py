"""Qwen3-VL (``Qwen3VLForConditionalGeneration``) with ZSPAPrune, for images.

What differs from the other Qwen families: the deepstack columns of each image row
(``Qwen3PruningModelMixin``). Processor, positions (``zspa_vllm.mrope``, on top of
Qwen3-VL's own interleaved M-RoPE rule) and the rest are shared
(``zspa_vllm.models.qwen``). Videos are never pruned.
"""

from __future__ import annotations

from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.models.qwen import Qwen3PruningModelMixin, QwenPruningProcessorMixin
from zspa_vllm.processor import PruningInfoMixin


class ZspaQwen3VLMultiModalProcessor(QwenPruningProcessorMixin, Qwen3VLMultiModalProcessor):
    PRUNED_MODALITIES = ("image",)  # a video's frames are separated by timestamp text


class ZspaQwen3VLProcessingInfo(PruningInfoMixin, Qwen3VLProcessingInfo):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    ZspaQwen3VLMultiModalProcessor,
    info=ZspaQwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class ZspaQwen3VLForConditionalGeneration(Qwen3PruningModelMixin, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL with ZSPAPrune on images, deepstack levels and M-RoPE positions kept."""
