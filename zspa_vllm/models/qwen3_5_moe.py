"""Qwen3.5-MoE (``Qwen3_5MoeForConditionalGeneration``) with ZSPAPrune, for images and videos:
Qwen3.5's vision side (``zspa_vllm.models.qwen3_5``) on a mixture-of-experts hybrid LLM,
which pruning does not touch."""

from __future__ import annotations

from vllm.model_executor.models.qwen3_5 import Qwen3_5MoeProcessingInfo
from vllm.model_executor.models.qwen3_vl import Qwen3VLDummyInputsBuilder
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.vllm_versions import vllm_object
from zspa_vllm.models.qwen import Qwen3PruningModelMixin
from zspa_vllm.models.qwen3_vl import ZspaQwen3VLMultiModalProcessor
from zspa_vllm.frontend.processor import PruningInfoMixin

# the class vLLM registers for the architecture on this release and platform
Qwen3_5MoeForConditionalGeneration = vllm_object("Qwen3_5MoeForConditionalGeneration")


class ZspaQwen3_5MoeProcessingInfo(PruningInfoMixin, Qwen3_5MoeProcessingInfo):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    ZspaQwen3VLMultiModalProcessor,
    info=ZspaQwen3_5MoeProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class ZspaQwen3_5MoeForConditionalGeneration(Qwen3PruningModelMixin, Qwen3_5MoeForConditionalGeneration):
    """vLLM's Qwen3.5-MoE with ZSPAPrune on images and videos, M-RoPE positions kept."""
