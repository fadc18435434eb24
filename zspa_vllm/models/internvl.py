"""InternVL 2.5 / 3 / 3.5 in the transformers format (``InternVLForConditionalGeneration``,
which vLLM 0.32 serves with ``InternS1ForConditionalGeneration``) with ZSPAPrune.

An image is ``<img>`` + ``<IMG_CONTEXT>`` x 256 per tile (its 1-12 aspect-ratio tiles,
then the thumbnail) + ``</img>``: one run over all tiles (``zspa_vllm.frontend.one_run``), one
budget per image; the pixel shuffle runs before the projector, so the rows vLLM's
``embed_multimodal`` returns are 1:1 with that run. Videos (one run per frame, with
``Frame{i}:`` text between) are served unpruned. 1-D RoPE: the kept tokens take
consecutive positions. The remote-code ``InternVLChatModel`` checkpoints are not
covered (its fixture would need the checkpoint's own configuration code).
"""

from __future__ import annotations

from vllm.model_executor.models.interns1 import (
    InternS1DummyInputsBuilder,
    InternS1ForConditionalGeneration,
    InternS1MultiModalProcessor,
    InternS1ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.worker.model import PruningModelMixin
from zspa_vllm.frontend.one_run import CountWithHfProcessorMixin, OneRunProcessorMixin
from zspa_vllm.core.query import CHATML_USER_TURN


class ZspaInternVLMultiModalProcessor(CountWithHfProcessorMixin, OneRunProcessorMixin, InternS1MultiModalProcessor):
    QUERY_PATTERN = CHATML_USER_TURN  # "<|im_start|>user\n<IMG_CONTEXT>\n{question}<|im_end|>"

    def _zspa_placeholder_id(self, modality):
        return self.info.get_hf_processor().image_token_id  # "<IMG_CONTEXT>", once per image


@MULTIMODAL_REGISTRY.register_processor(
    ZspaInternVLMultiModalProcessor, info=InternS1ProcessingInfo, dummy_inputs=InternS1DummyInputsBuilder
)
class ZspaInternVLForConditionalGeneration(PruningModelMixin, InternS1ForConditionalGeneration):
    """vLLM's InternVL (transformers format) with ZSPAPrune after the projector."""
