"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) with ZSPAPrune, for images and videos.

Everything but the class names is shared with the other Qwen families
(``zspa_vllm.models.qwen``, positions in ``zspa_vllm.worker.mrope``). A video is one run of
tokens over all its frames, pruned to one budget across frames; its kept tokens keep
their (t, h, w) positions.
"""

from __future__ import annotations

from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.models.qwen import QwenPruningModelMixin, QwenPruningProcessorMixin
from zspa_vllm.frontend.processor import PruningInfoMixin


class ZspaQwen2_5_VLMultiModalProcessor(QwenPruningProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    pass


class ZspaQwen2_5_VLProcessingInfo(PruningInfoMixin, Qwen2_5_VLProcessingInfo):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    ZspaQwen2_5_VLMultiModalProcessor,
    info=ZspaQwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class ZspaQwen2_5_VLForConditionalGeneration(QwenPruningModelMixin, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with ZSPAPrune on images and videos, M-RoPE positions kept."""
