"""Gemma 3 (``Gemma3ForConditionalGeneration``) with ZSPAPrune.

An image is ``\\n\\n<start_of_image>`` + 256 soft tokens + ``<end_of_image>\\n\\n``; only
the soft-token run shrinks (``zspa_vllm.frontend.one_run``), the wrappers stay. Image tokens
attend to each other bidirectionally: vLLM rebuilds those ranges every step from each
item's placeholder embed range, so the shorter run gets a shorter bidirectional block.
1-D RoPE: the kept tokens take consecutive positions.

Pan-and-scan (``do_pan_and_scan``) is refused when pruning: it makes an image several
runs (the original and each crop, with text between), and a run's length must be fixed
before the selection runs, so one budget over all crops cannot be laid out; budgets per
crop would need the worker to split an image's rows by crop.
"""

from __future__ import annotations

from vllm.model_executor.models.gemma3_mm import (
    Gemma3DummyInputsBuilder,
    Gemma3ForConditionalGeneration,
    Gemma3MultiModalProcessor,
    Gemma3ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.worker.model import NoEncoderGraphForPrunedMixin, PruningModelMixin
from zspa_vllm.frontend.one_run import CountWithHfProcessorMixin, OneRunProcessorMixin
from zspa_vllm.core.query import GEMMA_USER_TURN


class ZspaGemma3MultiModalProcessor(CountWithHfProcessorMixin, OneRunProcessorMixin, Gemma3MultiModalProcessor):
    QUERY_PATTERN = GEMMA_USER_TURN  # "<start_of_turn>user\n{content}<end_of_turn>"
    NOT_ONE_RUN_HINT = " with pan-and-scan crops (set do_pan_and_scan false to prune)"

    def _zspa_placeholder_id(self, modality):
        return self.info.get_hf_config().boi_token_index  # the template's "<start_of_image>"


@MULTIMODAL_REGISTRY.register_processor(
    ZspaGemma3MultiModalProcessor, info=Gemma3ProcessingInfo, dummy_inputs=Gemma3DummyInputsBuilder
)
class ZspaGemma3ForConditionalGeneration(NoEncoderGraphForPrunedMixin, PruningModelMixin, Gemma3ForConditionalGeneration):
    """vLLM's Gemma 3 with ZSPAPrune after the projector (soft tokens only)."""
