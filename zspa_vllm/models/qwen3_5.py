"""Qwen3.5 (``Qwen3_5ForConditionalGeneration``) with ZSPAPrune, for images and videos.

Qwen3-VL's processing and vision tower (without DeepStack) in front of a hybrid LLM:
Gated DeltaNet (linear-attention) layers beside full-attention ones. Pruning only
shortens the image and video runs of the prompt, which both kinds of layer then see; nothing here
differs from Qwen3-VL (``Qwen3PruningModelMixin``: with no DeepStack levels the rows are
the LLM inputs). What vLLM's prefix caching keeps for hybrid models (the recurrent state
at block boundaries only, "align" mode) is covered in tests/engine/test_zspa_qwen.py.
"""

from __future__ import annotations

from vllm.model_executor.models.qwen3_5 import Qwen3_5ProcessingInfo
from vllm.model_executor.models.qwen3_vl import Qwen3VLDummyInputsBuilder
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.vllm_versions import vllm_object
from zspa_vllm.models.qwen import Qwen3PruningModelMixin
from zspa_vllm.models.qwen3_vl import ZspaQwen3VLMultiModalProcessor
from zspa_vllm.frontend.processor import PruningInfoMixin

# the class vLLM registers for the architecture on this release and platform
Qwen3_5ForConditionalGeneration = vllm_object("Qwen3_5ForConditionalGeneration")


class ZspaQwen3_5ProcessingInfo(PruningInfoMixin, Qwen3_5ProcessingInfo):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    ZspaQwen3VLMultiModalProcessor,
    info=ZspaQwen3_5ProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class ZspaQwen3_5ForConditionalGeneration(Qwen3PruningModelMixin, Qwen3_5ForConditionalGeneration):
    """vLLM's Qwen3.5 with ZSPAPrune on images and videos, M-RoPE positions kept."""
