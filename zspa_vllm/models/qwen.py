"""What every Qwen vision-language family shares for pruning (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, Qwen3-VL-MoE).

Processor: an image is one uniform run of ``<|image_pad|>`` tokens, ``t * h * w /
merge**2`` long (``image_grid_thw``, for pixels and precomputed embeddings alike), and
so is a video in Qwen2-VL and Qwen2.5-VL (``<|video_pad|>``, ``video_grid_thw``, all
frames in one run); the replacement shortens each pruned run to the budget (Qwen3-VL's
videos, with timestamp text between grid steps: ``zspa_vllm.models.qwen3_vl``). Model:
items' patches are laid back to back in ``pixel_values`` / ``pixel_values_videos``
(flat), and the vision encoder's CUDA graph is not used for pruned modalities (a
captured graph would skip ``embed_multimodal``, and so the selection). M-RoPE
positions: ``zspa_vllm.worker.mrope``.
"""

from __future__ import annotations

import torch
from vllm.multimodal.processing import PromptReplacement

from zspa_vllm.worker.model import NoEncoderGraphForPrunedMixin, PruningModelMixin
from zspa_vllm.worker.mrope import PrunedMropeMixin
from zspa_vllm.core.fields import MODALITIES, ZSPA_KWARG
from zspa_vllm.frontend.processor import PruningProcessorMixin
from zspa_vllm.core.query import CHATML_USER_TURN


class QwenPruningProcessorMixin(PruningProcessorMixin):
    """Mix in before a vLLM Qwen-VL multimodal processor."""

    QUERY_PATTERN = CHATML_USER_TURN  # "<|im_start|>user\n{content}<|im_end|>"
    PRUNED_MODALITIES = MODALITIES  # images and videos (a video: one budget over all its frames)

    def _zspa_visual_counts(self, processed, modality, mm_items, mm_kwargs):
        grid = processed.get(f"{modality}_grid_thw")  # pixel inputs and precomputed embeddings
        if grid is None:  # no items of this modality in this call
            return []
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        return [int(t * h * w) // merge**2 for t, h, w in grid.tolist()]

    def _zspa_placeholder_id(self, modality):
        config = self.info.get_hf_config()
        return config.image_token_id if modality == "image" else config.video_token_id

    def _zspa_num_image_tokens(self, width, height, mm_kwargs):
        image_processor = self.info.get_image_processor(**mm_kwargs)  # its min/max_pixels decide
        return int(
            self.info.get_num_image_tokens(
                image_width=width, image_height=height, image_processor=image_processor, mm_kwargs=mm_kwargs
            )
        )

    def _zspa_num_video_tokens(self, width, height, num_frames, mm_kwargs):
        video_processor = self.info.get_hf_processor(**mm_kwargs).video_processor  # its own min/max pixels
        return int(
            self.info.get_num_video_tokens(
                image_width=width,
                image_height=height,
                num_frames=num_frames,
                image_processor=video_processor,
                mm_kwargs=mm_kwargs,
            )
        )

    def _zspa_frame_offsets(self, processed, item):
        # vLLM's rule (Qwen2_5_VLForConditionalGeneration.iter_mm_grid_thw): grid step k
        # sits at t + int(k * seconds per step * tokens_per_second), both 1 where absent
        steps = int(processed["video_grid_thw"][item][0])
        seconds = processed.get("second_per_grid_ts")
        factor = float(seconds[item]) if seconds is not None else 1.0
        factor *= getattr(self.info.get_hf_config().vision_config, "tokens_per_second", 1.0)
        return [[int(k * factor), 0, 0] for k in range(steps)]

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        # vLLM's image and video replacements, those of pruned modalities with the pruned count
        updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))
        if ZSPA_KWARG not in hf_processor_mm_kwargs:
            return updates

        def pruned(update):
            def replacement(item_idx: int):
                return self._zspa_pruned_replacement(update, item_idx, out_mm_kwargs, hf_processor_mm_kwargs)

            return PromptReplacement(modality=update.modality, target=update.target, replacement=replacement)

        return [pruned(u) if u.modality in self.PRUNED_MODALITIES else u for u in updates]

    def _zspa_pruned_replacement(self, update, item_idx, out_mm_kwargs, hf_processor_mm_kwargs):
        """vLLM's run of placeholder tokens for the item, shortened to its budget."""
        full = update.replacement(item_idx)
        return full[:1] * self._zspa_placeholder_count(len(full), hf_processor_mm_kwargs)


class QwenPruningModelMixin(PrunedMropeMixin, NoEncoderGraphForPrunedMixin, PruningModelMixin):
    """Mix in before a vLLM Qwen-VL model class."""

    _PIXELS = {"image": "pixel_values", "video": "pixel_values_videos"}
    _PER_VIDEO = ("second_per_grid_ts", "timestamps")  # Qwen2.5-VL's, Qwen3-VL's: one entry per video

    def _zspa_select_inputs(self, kwargs, indices, count):
        if indices == list(range(count)):
            return kwargs
        modality = "video" if "video_grid_thw" in kwargs else "image"
        pixels_key, grid_key = self._PIXELS[modality], f"{modality}_grid_thw"
        if not {pixels_key, grid_key} <= set(kwargs) <= {pixels_key, grid_key, *self._PER_VIDEO}:
            return None
        # the pixels hold every item's patches back to back: t * h * w rows each
        grid = kwargs[grid_key]
        ends = torch.cumsum(grid.prod(dim=-1), dim=0).tolist()
        pixels = [kwargs[pixels_key][(ends[i - 1] if i else 0) : ends[i]] for i in indices]
        selected = {pixels_key: torch.cat(pixels), grid_key: grid[indices]}
        for key in set(self._PER_VIDEO) & set(kwargs):
            value = kwargs[key]
            selected[key] = value[indices] if isinstance(value, torch.Tensor) else [value[i] for i in indices]
        return selected


class Qwen3PruningModelMixin(QwenPruningModelMixin):
    """Mix in before a vLLM Qwen3-VL-based model class (Qwen3-VL, Qwen3-VL-MoE).

    Its vision tower returns each token's main features with its *deepstack* levels
    concatenated as extra columns (``visual_dim`` each), which vLLM splits off again in
    ``_compute_deepstack_embeds`` and adds to the first LLM layers' hidden states. The
    selection compares the main features only; a kept token keeps its deepstack
    columns (the same rows), and our position columns go after all of them. A video's
    grid steps are laid out like images, each after its timestamp text
    (``_zspa_unpruned_region``)."""

    def _zspa_embedding_width(self) -> int:
        return self.visual_dim + self.multiscale_dim  # multiscale_dim is 0 without deepstack

    def _zspa_selection_features(self, visual):
        return visual[:, : self.visual_dim]

    def _zspa_unpruned_region(self, feature, region, num_visual):
        if feature.modality != "video":
            return super()._zspa_unpruned_region(feature, region, num_visual)
        # <t seconds><|vision_start|> pads <|vision_end|> per grid step: every step's run
        # of pads (empty in a pruned video's later steps) back to its full size
        config = self.config
        steps = int(feature.data["video_grid_thw"].data[0])
        cells = num_visual // steps
        tokens, picks, base = [], [], None
        for token in region:
            if token == config.video_token_id:
                picks.append(base)  # a kept token: the video's base, its offsets come later
                continue
            picks.append(len(tokens))
            tokens.append(token)
            if token == config.vision_start_token_id:
                base = len(tokens) if base is None else base
                tokens.extend([config.video_token_id] * cells)
        return tokens, picks
