"""Qwen3-VL-MoE (``Qwen3VLMoeForConditionalGeneration``) with ZSPAPrune, for images and videos:
Qwen3-VL's vision side (``zspa_vllm.models.qwen3_vl``) on a mixture-of-experts LLM,
which pruning does not touch."""

from __future__ import annotations

from vllm.model_executor.models.qwen3_vl import Qwen3VLDummyInputsBuilder
from vllm.model_executor.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration, Qwen3VLMoeProcessingInfo
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.models.qwen import Qwen3PruningModelMixin
from zspa_vllm.models.qwen3_vl import ZspaQwen3VLMultiModalProcessor
from zspa_vllm.frontend.processor import PruningInfoMixin


class ZspaQwen3VLMoeProcessingInfo(PruningInfoMixin, Qwen3VLMoeProcessingInfo):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    ZspaQwen3VLMultiModalProcessor,
    info=ZspaQwen3VLMoeProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class ZspaQwen3VLMoeForConditionalGeneration(Qwen3PruningModelMixin, Qwen3VLMoeForConditionalGeneration):
    """vLLM's Qwen3-VL-MoE with ZSPAPrune on images and videos, deepstack levels and M-RoPE positions kept."""
