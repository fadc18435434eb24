"""Pruned images under M-RoPE (the Qwen families): kept tokens keep their positions.

A kept visual token keeps the (t, h, w) position it has in the unpruned image, and the
text after an image continues from max(unpruned grid positions) + 1, exactly as if
nothing had been pruned. This reuses vLLM's Efficient-Video-Sampling plumbing
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
vLLM. The runner only calls that hook once ``zspa_vllm.runner_hooks`` is installed.
"""

from __future__ import annotations

import numpy as np
import torch

from zspa_vllm.runner_hooks import install_runner_hooks

# Extra embedding columns on a pruned image's kept rows: (h // 256, h % 256, w // 256,
# w % 256) of the token's merged-grid cell; every value is an integer < 256, so exact
# even in bfloat16. (An image's t coordinate is always 0.)
POS_CHANNELS = 4
_RADIX = 256


def _is_pruned_image(feature) -> bool:
    return feature.modality == "image" and feature.data is not None and "zspa_num_keep" in feature.data


class PrunedMropeMixin:
    """Mix in before ``zspa_vllm.model.PruningModelMixin`` on a vLLM M-RoPE model whose
    ``iter_mm_grid_thw`` yields (offset, t, h, w, t_factor) per item (Qwen2-VL and
    Qwen2.5-VL) and whose image inputs carry ``image_grid_thw``."""

    # Read by the runner hooks: this model needs recompute_mrope_positions called.
    zspa_prunes_images = True

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        # (video_pruning_rate, pipeline parallelism: refused at start-up, zspa_vllm/config_checks.py)
        install_runner_hooks()

    def _zspa_embedding_width(self) -> int:
        """Width of a multimodal embedding row before our position columns."""
        return self.config.text_config.hidden_size

    def embed_multimodal(self, **kwargs):
        # the image grids of this call, for _zspa_kept_rows (the worker is single-threaded)
        self._zspa_grids = kwargs.get("image_grid_thw")
        try:
            return super().embed_multimodal(**kwargs)
        finally:
            self._zspa_grids = None

    def _zspa_kept_rows(self, visual, kept, item):
        t, h, w = (int(x) for x in self._zspa_grids[item])
        grid_w = w // self.visual.spatial_merge_size
        rows, cols = kept // grid_w, kept % grid_w  # tokens are in (t, h, w) row-major order
        channels = torch.stack([rows // _RADIX, rows % _RADIX, cols // _RADIX, cols % _RADIX], dim=1)
        return torch.cat([visual[kept], channels.to(device=visual.device, dtype=visual.dtype)], dim=1)

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
        width = self._zspa_embedding_width()
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

