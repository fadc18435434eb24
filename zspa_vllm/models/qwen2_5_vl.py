"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) with ZSPAPrune, for images.

Videos are never pruned: only image items get our per-image fields, so a video (alone,
or next to pruned images in one prompt) takes vLLM's own path and keeps every token.

M-RoPE. A kept visual token keeps the (t, h, w) position it has in the unpruned image,
and the text after an image continues from max(unpruned grid positions) + 1, exactly
as if nothing had been pruned. This reuses vLLM's Efficient-Video-Sampling plumbing
(``SupportsMultiModalPruning``): the kept rows carry their grid coordinates as
``POS_CHANNELS`` extra embedding columns, which live in the encoder cache with the rows
(so they survive chunked prefill and cache hits), and the model runner calls
``recompute_mrope_positions`` per request and step, where they are split off and
written into the request's positions. Two hooks of ours differ from vLLM's EVS:

- ``get_mrope_input_positions`` already lays out the text positions of the pruned
  prompt correctly (a pruned image advances them by its unpruned extent), and gives
  each pruned placeholder the image's base position in every channel;
- ``recompute_mrope_positions`` only adds each kept token's (h, w) offset to its base.
  It never moves text tokens, so it is idempotent and independent of where chunks
  start or how many media share one chunk. (vLLM's ``evs.recompute_mrope_positions``
  mis-maps media at chunk boundaries and after a first media item in a chunk, vLLM
  issue 48833, and continues the text after an image from its width, not from
  max(height, width).)

Embeddings of requests that do not prune get no extra channels; for them
``recompute_mrope_positions`` returns the positions unchanged, so keep_rate 1 is stock
vLLM. vLLM 0.32's runners only call that hook when their ``is_multimodal_pruning_enabled``
is set, which needs ``video_pruning_rate`` (GPU) or never happens (CPU runner);
``_install_runner_hooks`` (run from the model's constructor, inside the worker's
load_model) turns it on for models reporting ``zspa_prunes_images``, i.e. this class.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import numpy as np
import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement

from zspa_vllm.model import PruningModelMixin
from zspa_vllm.processor import ZSPA_KWARG, PruningInfoMixin, PruningProcessorMixin
from zspa_vllm.query import CHATML_USER_TURN

# The vLLM series whose runner internals the hooks below are written against.
HOOKED_VLLM_SERIES = "0.32."

# Extra embedding columns on a pruned image's kept rows: (h // 256, h % 256, w // 256,
# w % 256) of the token's merged-grid cell; every value is an integer < 256, so exact
# even in bfloat16. (An image's t coordinate is always 0.)
POS_CHANNELS = 4
_RADIX = 256


def _is_pruned_image(feature) -> bool:
    return feature.modality == "image" and feature.data is not None and "zspa_num_keep" in feature.data


class ZspaQwen2_5_VLMultiModalProcessor(PruningProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    QUERY_PATTERN = CHATML_USER_TURN  # "<|im_start|>user\n{content}<|im_end|>"

    def _zspa_visual_counts(self, processed):
        grid = processed.get("image_grid_thw")  # pixel inputs and precomputed embeddings
        if grid is None:  # no images in this call (text or video only)
            return []
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        return [int(t * h * w) // merge**2 for t, h, w in grid.tolist()]

    def _zspa_image_token_id(self):
        return self.info.get_hf_config().image_token_id

    def _zspa_num_image_tokens(self, width, height, mm_kwargs):
        image_processor = self.info.get_image_processor(**mm_kwargs)  # its min/max_pixels decide
        return int(
            self.info.get_num_image_tokens(
                image_width=width, image_height=height, image_processor=image_processor, mm_kwargs=mm_kwargs
            )
        )

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        # vLLM's image and video replacements; the image one with the pruned count
        updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))
        if ZSPA_KWARG not in hf_processor_mm_kwargs:
            return updates

        def pruned(update):
            def replacement(item_idx: int):
                full = update.replacement(item_idx)
                return full[:1] * self._zspa_placeholder_count(len(full), hf_processor_mm_kwargs)

            return PromptReplacement(modality="image", target=update.target, replacement=replacement)

        return [pruned(u) if u.modality == "image" else u for u in updates]


class ZspaQwen2_5_VLProcessingInfo(PruningInfoMixin, Qwen2_5_VLProcessingInfo):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    ZspaQwen2_5_VLMultiModalProcessor,
    info=ZspaQwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class ZspaQwen2_5_VLForConditionalGeneration(PruningModelMixin, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with ZSPAPrune on images and M-RoPE positions kept."""

    # Read by the runner hooks: this model needs recompute_mrope_positions called.
    zspa_prunes_images = True

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        # (video_pruning_rate, pipeline parallelism: refused at start-up, zspa_vllm/config_checks.py)
        _install_runner_hooks()

    # -- worker: selection output

    def embed_multimodal(self, **kwargs):
        # the image grids of this call, for _zspa_kept_rows (the worker is single-threaded)
        self._zspa_grids = kwargs.get("image_grid_thw")
        try:
            return super().embed_multimodal(**kwargs)
        finally:
            self._zspa_grids = None

    def _zspa_select_inputs(self, kwargs, indices, count):
        if indices == list(range(count)):
            return kwargs
        if set(kwargs) != {"pixel_values", "image_grid_thw"}:
            return None
        # pixel_values holds every image's patches back to back: t * h * w rows each
        grid = kwargs["image_grid_thw"]
        ends = torch.cumsum(grid.prod(dim=-1), dim=0).tolist()
        pixels = [kwargs["pixel_values"][(ends[i - 1] if i else 0) : ends[i]] for i in indices]
        return {"pixel_values": torch.cat(pixels), "image_grid_thw": grid[indices]}

    def _zspa_kept_rows(self, visual, kept, item):
        t, h, w = (int(x) for x in self._zspa_grids[item])
        grid_w = w // self.visual.spatial_merge_size
        rows, cols = kept // grid_w, kept % grid_w  # tokens are in (t, h, w) row-major order
        channels = torch.stack([rows // _RADIX, rows % _RADIX, cols // _RADIX, cols % _RADIX], dim=1)
        return torch.cat([visual[kept], channels.to(device=visual.device, dtype=visual.dtype)], dim=1)

    # -- M-RoPE

    def get_mrope_input_positions(self, input_tokens, mm_features):
        if not any(_is_pruned_image(f) for f in mm_features):
            return super().get_mrope_input_positions(input_tokens, mm_features)  # stock
        # As vLLM's, except that a pruned image's run is shorter than its grid: its
        # placeholders get the image's base position (recompute_mrope_positions adds the
        # kept tokens' (h, w) later) and the text after it continues past the full grid.
        features = sorted(mm_features, key=lambda f: f.mm_position.offset)
        pieces, st, next_pos = [], 0, 0
        for feature, (offset, grid_t, grid_h, grid_w, t_factor) in zip(features, self.iter_mm_grid_thw(features)):
            text_len = offset - st
            pieces.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_pos)
            base = next_pos + text_len
            grid = np.indices((grid_t, grid_h, grid_w)).reshape(3, -1)
            if t_factor != 1.0:
                grid[0] = (grid[0] * t_factor).astype(np.int64)
            length = feature.mm_position.length
            if _is_pruned_image(feature):
                pieces.append(np.full((3, length), base, dtype=np.int64))
            else:
                pieces.append(grid + base)
            next_pos = base + int(grid.max()) + 1
            st = offset + length
        text_len = len(input_tokens) - st
        pieces.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_pos)
        positions = np.concatenate(pieces, axis=1).astype(np.int64)
        return torch.from_numpy(positions), next_pos + text_len - len(input_tokens)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        """Called by the runner for every request and step (see the module docstring)."""
        width = self.config.text_config.hidden_size
        embeddings = list(multimodal_embeddings)
        positions = mrope_positions
        num_tokens = len(input_ids)
        if any(mm.shape[-1] == width + POS_CHANNELS for mm in embeddings):
            device = positions.device
            ids = torch.as_tensor(input_ids, device=device)
            media = (ids == self.config.image_token_id) | (ids == self.config.video_token_id)
            media[:num_computed_tokens] = False
            # the embeddings of this step fill the media tokens from num_computed_tokens on,
            # in order (every Qwen placeholder token is an embedding row)
            slots = media.nonzero().squeeze(1)
            positions = positions.clone()
            cursor = 0
            for i, mm in enumerate(embeddings):
                if mm.shape[-1] == width + POS_CHANNELS:
                    where = slots[cursor : cursor + mm.shape[0]]
                    cell = mm[:, width:].round().long().to(device)
                    base = positions[0, where]  # the image's base: t offset is 0 for images
                    positions[1, where] = base + cell[:, 0] * _RADIX + cell[:, 1]
                    positions[2, where] = base + cell[:, 2] * _RADIX + cell[:, 3]
                    embeddings[i] = mm[:, :width]
                cursor += mm.shape[0]
        delta = int(positions.max()) + 1 - num_tokens if positions.numel() else -num_tokens
        return embeddings, positions, delta

    def get_encoder_cudagraph_config(self):
        # a captured encoder graph would skip embed_multimodal, and so the pruning
        config = super().get_encoder_cudagraph_config()
        return dataclasses.replace(config, modalities=[m for m in config.modalities if m != "image"])


# --------------------------------------------------------------------------- runner hooks
_hooks_installed = False


def _install_runner_hooks() -> None:
    """Make vLLM 0.32's model runners call recompute_mrope_positions for our model."""
    global _hooks_installed
    if _hooks_installed:
        return
    import vllm

    if not vllm.__version__.startswith(HOOKED_VLLM_SERIES):
        raise RuntimeError(f"zspa-vllm: runner hooks are written for vLLM {HOOKED_VLLM_SERIES}x, found {vllm.__version__}")

    # V1 runners (GPUModelRunner and CPUModelRunner, which inherits this method): the
    # CPU runner never sets is_multimodal_pruning_enabled, the GPU one only for video_pruning_rate.
    runner_module = sys.modules.get("vllm.v1.worker.gpu_model_runner")
    if runner_module is not None:
        runner_cls = runner_module.GPUModelRunner
        gather = runner_cls._gather_mm_embeddings

        @functools.wraps(gather)  # keeps the upstream signature visible (tests/unit/test_upstream_hooks.py)
        def _gather_mm_embeddings(self, *args, **kwargs):
            if not self.is_multimodal_pruning_enabled and getattr(self.get_model(), "zspa_prunes_images", False):
                self.is_multimodal_pruning_enabled = True
            return gather(self, *args, **kwargs)

        runner_cls._gather_mm_embeddings = _gather_mm_embeddings

    # V2 runner (vllm/v1/worker/gpu/): creates its M-RoPE pruner only for video_pruning_rate.
    if "vllm.v1.worker.gpu.model_runner" in sys.modules:
        from vllm.v1.worker.gpu.model_states import mm_pruning

        create = mm_pruning.maybe_create_mm_pruner

        @functools.wraps(create)
        def maybe_create_mm_pruner(model_config, model, rope_state, encoder_cache):
            pruner = create(model_config, model, rope_state, encoder_cache)
            if pruner is None and getattr(model, "zspa_prunes_images", False) and None not in (rope_state, encoder_cache):
                pruner = mm_pruning.MultiModalPruner(model, rope_state, encoder_cache, model_config.get_inputs_embeds_size())
            return pruner

        mm_pruning.maybe_create_mm_pruner = maybe_create_mm_pruner
        default = sys.modules.get("vllm.v1.worker.gpu.model_states.default")
        if default is not None:  # already bound the original by name
            default.maybe_create_mm_pruner = maybe_create_mm_pruner
    _hooks_installed = True
