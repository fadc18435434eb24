"""Qwen3-VL (``Qwen3VLForConditionalGeneration``) with ZSPAPrune, for images and videos.

What differs from the other Qwen families: the deepstack columns of each row
(``Qwen3PruningModelMixin``), and a video's layout: each grid step (two frames) is
``<t seconds><|vision_start|>`` + its tokens + ``<|vision_end|>``, and each step is
positioned like an image after its timestamp text. A pruned video keeps every
timestamp; its budget (over all steps' tokens) is split evenly over the steps' runs,
which the kept tokens fill in order, each at its own unpruned position: vLLM fixes the
prompt before the vision encoder runs, so the runs cannot follow the selection. (vLLM's
EVS puts all kept tokens in the first step's run.) Processor, positions
(``zspa_vllm.worker.mrope``, on top of Qwen3-VL's own interleaved M-RoPE rule) and the rest are
shared (``zspa_vllm.models.qwen``).
"""

from __future__ import annotations

from types import SimpleNamespace

from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm.models.qwen import Qwen3PruningModelMixin, QwenPruningProcessorMixin
from zspa_vllm.frontend.processor import PruningInfoMixin


def step_slots(keep: int, steps: int) -> list[int]:
    """``keep`` tokens split as evenly as possible over ``steps`` runs, earlier runs first."""
    return [keep // steps + (k < keep % steps) for k in range(steps)]


class ZspaQwen3VLMultiModalProcessor(QwenPruningProcessorMixin, Qwen3VLMultiModalProcessor):
    def _zspa_pruned_replacement(self, update, item_idx, out_mm_kwargs, hf_processor_mm_kwargs):
        if update.modality != "video":
            return super()._zspa_pruned_replacement(update, item_idx, out_mm_kwargs, hf_processor_mm_kwargs)
        item = out_mm_kwargs["video"][item_idx]
        steps, cells = self._zspa_video_grid(item["video_grid_thw"].data)
        keep = self._zspa_placeholder_count(steps * cells, hf_processor_mm_kwargs)
        return self._zspa_video_tokens(step_slots(keep, steps), item["timestamps"].data)

    def _zspa_frame_offsets(self, processed, item):
        # each step's base, from Qwen3-VL's own rule on the unpruned layout: all three
        # channels move with the timestamp text before it
        grid = processed["video_grid_thw"][item]
        steps, cells = self._zspa_video_grid(grid)
        tokens = list(self._zspa_video_tokens([cells] * steps, processed["timestamps"][item]).full)
        config = self.info.get_hf_config()
        feature = SimpleNamespace(
            modality="video", data={"video_grid_thw": SimpleNamespace(data=grid)}, mm_position=SimpleNamespace(offset=0)
        )
        positions, _ = Qwen3VLForConditionalGeneration._get_mrope_input_positions(tokens, [feature], config)
        firsts = [i for i, token in enumerate(tokens) if token == config.video_token_id][::cells]
        return [[int(positions[0, i] - positions[0, firsts[0]])] * 3 for i in firsts]

    def _zspa_video_grid(self, grid) -> tuple[int, int]:
        """(grid steps, tokens per step) of a video."""
        t, h, w = (int(x) for x in grid)
        return t, h * w // self.info.get_hf_config().vision_config.spatial_merge_size**2

    def _zspa_video_tokens(self, tokens_per_step, timestamps):
        config = self.info.get_hf_config()
        return Qwen3VLMultiModalProcessor.get_video_repl(
            tokens_per_frame=tokens_per_step,
            timestamps=timestamps,
            tokenizer=self.info.get_tokenizer(),
            vision_start_token_id=config.vision_start_token_id,
            vision_end_token_id=config.vision_end_token_id,
            video_token_id=config.video_token_id,
            select_token_id=True,  # the video tokens are the embeddings
        )


class ZspaQwen3VLProcessingInfo(PruningInfoMixin, Qwen3VLProcessingInfo):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    ZspaQwen3VLMultiModalProcessor,
    info=ZspaQwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class ZspaQwen3VLForConditionalGeneration(Qwen3PruningModelMixin, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL with ZSPAPrune on images and videos, deepstack levels and M-RoPE positions kept."""
