"""Qwen2-VL (``Qwen2VLForConditionalGeneration``) with ZSPAPrune, for images and videos.

Everything but the class names is shared with the other Qwen families
(``zspa_vllm.models.qwen``, positions in ``zspa_vllm.worker.mrope``). A video is one run of
tokens over all its frames, pruned to one budget across frames; its kept tokens keep
their (t, h, w) positions.
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
from zspa_vllm.frontend.processor import PruningInfoMixin


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
    """vLLM's Qwen2-VL with ZSPAPrune on images and videos, M-RoPE positions kept."""
