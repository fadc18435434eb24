"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``) with ZSPAPrune.

What is pruned: the whole flattened any-resolution sequence of one image exactly as vLLM's
``LlavaNextForConditionalGeneration.embed_multimodal`` returns it -- the base (336 view)
tile features, then the unpadded grid features row by row, each row followed by its
``image_newline`` row. ``n`` is that length, which is the placeholder count vLLM uses
(``LlavaNextProcessingInfo.get_num_image_tokens`` of the image size), one run of
``<image>`` tokens (``zspa_vllm.frontend.one_run``); ``l = num_kept(n, keep_rate)``. Newline rows
compete like any other token (they are identical vectors, so the diversity step keeps at
most one of them unless the relevance core wants more). The kept rows keep their
relative order (base first, then the grid in raster order).

1-D RoPE: the kept tokens simply take consecutive positions, nothing else changes.
"""

from __future__ import annotations

from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.worker.model import PruningModelMixin
from zspa_vllm.frontend.one_run import OneRunProcessorMixin
from zspa_vllm.core.query import MISTRAL_USER_TURN


class ZspaLlavaNextMultiModalProcessor(OneRunProcessorMixin, LlavaNextMultiModalProcessor):
    QUERY_PATTERN = MISTRAL_USER_TURN  # llava-v1.6-mistral: "[INST] <image>\n{question} [/INST]"


@MULTIMODAL_REGISTRY.register_processor(
    ZspaLlavaNextMultiModalProcessor, info=LlavaNextProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class ZspaLlavaNextForConditionalGeneration(PruningModelMixin, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT with ZSPAPrune after the any-resolution merge (newlines included)."""
