"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``) with ZSPAPrune.

An image is one run of ``<image>`` tokens (``zspa_vllm.frontend.one_run``) holding exactly what
vLLM's ``embed_multimodal`` returns for it: the base (384 view) tile's features, then the
any-resolution grid (pooled down under ``anyres_max_9``) row by row, each row followed by
its learned ``image_newline`` row; newline rows compete like any other token, as in
LLaVA-NeXT. 1-D RoPE: the kept tokens take consecutive positions. Videos (one run of
``<video>`` tokens too: every frame's pooled features, then one newline) are served
unpruned: not yet tested.
"""

from __future__ import annotations

from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.worker.model import PruningModelMixin
from zspa_vllm.frontend.one_run import OneRunProcessorMixin
from zspa_vllm.core.query import CHATML_SPACE_USER_TURN


class ZspaLlavaOnevisionMultiModalProcessor(OneRunProcessorMixin, LlavaOnevisionMultiModalProcessor):
    QUERY_PATTERN = CHATML_SPACE_USER_TURN  # "<|im_start|>user <image>\n{question}<|im_end|>"


@MULTIMODAL_REGISTRY.register_processor(
    ZspaLlavaOnevisionMultiModalProcessor, info=LlavaOnevisionProcessingInfo, dummy_inputs=LlavaOnevisionDummyInputsBuilder
)
class ZspaLlavaOnevisionForConditionalGeneration(PruningModelMixin, LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision with ZSPAPrune after the any-resolution merge (newlines included)."""
