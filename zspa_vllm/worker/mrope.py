"""Pruned images and videos under M-RoPE (the Qwen families): kept tokens keep their
positions.

A kept visual token keeps the (t, h, w) position it has in the unpruned image or video
(a video's t with its family's temporal scaling), and the text after it continues from
max(unpruned grid positions) + 1, exactly as if nothing had been pruned. This reuses vLLM's Efficient-Video-Sampling plumbing
(``SupportsMultiModalPruning``): the kept rows carry their grid coordinates as
``POS_CHANNELS`` extra embedding columns, which live in the encoder cache with the rows
(so they survive chunked prefill and cache hits), and the model runner calls
``recompute_mrope_positions`` per request and step, where they are split off and
written into the request's positions. Two hooks of ours differ from vLLM's EVS:

- ``get_mrope_input_positions`` runs the family's own rule on the prompt as it would
  be unpruned, so text (and unpruned media) keep their unpruned positions, and gives
  each pruned placeholder its item's base position in every channel;
- ``recompute_mrope_positions`` only adds each kept token's (t, h, w) offset to its base.
  It never moves text tokens, so it is idempotent and independent of where chunks
  start or how many media share one chunk. (vLLM's ``evs.recompute_mrope_positions``
  mis-maps media at chunk boundaries and after a first media item in a chunk, vLLM
  issue 48833, and continues the text after an image from its width, not from
  max(height, width).)

Embeddings of requests that do not prune get no extra channels; for them
``recompute_mrope_positions`` returns the positions unchanged, so keep_rate 1 is stock
vLLM. The runner only calls that hook once ``zspa_vllm.worker.runner_hooks`` is installed.
"""

from __future__ import annotations

import dataclasses

import torch

from zspa_vllm.core.fields import field_names
from zspa_vllm.worker.runner_hooks import install_runner_hooks

# Extra embedding columns on a pruned item's kept rows: (t // 256, t % 256, h // 256,
# h % 256, w // 256, w % 256) of the token's position offset from its item's base;
# every value is an integer < 256, so exact even in bfloat16. (t is 0 for an image.)
POS_CHANNELS = 6
_RADIX = 256


def _unpruned_length(feature, merge: int) -> int | None:
    """A pruned item's unpruned token count (it has fewer embeddings than its grid), else
    None. Read from the grid, which vLLM keeps in the feature even where it drops the
    rest of an item's data (an item wholly served from the prefix cache)."""
    grid_key = f"{feature.modality}_grid_thw"
    if feature.data is None or grid_key not in feature.data:
        return None
    num_visual = int(feature.data[grid_key].data.prod()) // merge**2
    return num_visual if feature.mm_position.get_num_embeds() < num_visual else None


class PrunedMropeMixin:
    """Mix in before ``zspa_vllm.worker.model.PruningModelMixin`` on a vLLM M-RoPE model whose
    inputs carry ``image_grid_thw`` (and ``video_grid_thw``) and whose placeholder run is
    one token per merged-grid cell (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)."""

    # Read by the runner hooks: this model needs recompute_mrope_positions called.
    zspa_prunes_media = True

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        # (video_pruning_rate, pipeline parallelism: refused at start-up, zspa_vllm/engine/config_checks.py)
        install_runner_hooks()

    def _zspa_embedding_width(self) -> int:
        """Width of a multimodal embedding row before our position columns."""
        return self.config.text_config.hidden_size

    def embed_multimodal(self, **kwargs):
        # the grids and a video's per-step offsets (the processor's, each family's rule)
        # of this call, for _zspa_kept_rows (the worker is single-threaded)
        keys = ("image_grid_thw", "video_grid_thw", field_names("video")["frame_offsets"])
        self._zspa_call = {key: kwargs.get(key) for key in keys}
        try:
            return super().embed_multimodal(**kwargs)
        finally:
            self._zspa_call = None

    def _zspa_kept_rows(self, visual, kept, modality, item):
        _, h, w = (int(x) for x in self._zspa_call[f"{modality}_grid_thw"][item])
        merge = self.config.vision_config.spatial_merge_size
        frame_size, grid_w = (h // merge) * (w // merge), w // merge
        # tokens are in (t, h, w) row-major order; a kept token sits at its grid step's
        # offset (an image's only step: 0) plus (0, row, column)
        frames, rows, cols = kept // frame_size, kept % frame_size // grid_w, kept % grid_w
        offsets = torch.stack([torch.zeros_like(rows), rows, cols], dim=1)
        if modality == "video":
            steps = self._zspa_call[field_names("video")["frame_offsets"]][item]
            offsets = offsets + torch.as_tensor(steps, device=kept.device)[frames]
        channels = torch.stack([offsets // _RADIX, offsets % _RADIX], dim=2).reshape(-1, POS_CHANNELS)
        return torch.cat([visual[kept], channels.to(device=visual.device, dtype=visual.dtype)], dim=1)

    def _zspa_unpruned_region(self, feature, region: list[int], num_visual: int) -> tuple[list[int], list[int]]:
        """A pruned item's placeholder tokens as they would be unpruned, and for each of
        its pruned tokens the index there whose position it starts from (a kept token:
        the item's first visual token, its base). Default: the region is one run of
        placeholder tokens."""
        return [region[0]] * num_visual, [0] * len(region)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        merge = self.config.vision_config.spatial_merge_size
        if not any(_unpruned_length(f, merge) for f in mm_features):
            return super().get_mrope_input_positions(input_tokens, mm_features)  # stock
        # vLLM's own rule (the family's, with its video layout) on the prompt as it would
        # be unpruned; then each pruned item's tokens take the item's base position in
        # every channel (recompute_mrope_positions adds the kept tokens' offsets later),
        # and the text after it keeps its place past the full grid.
        tokens, features, picks, st = [], [], [], 0
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            place = feature.mm_position
            picks.extend(range(len(tokens), len(tokens) + place.offset - st))
            tokens.extend(input_tokens[st : place.offset])
            start = len(tokens)
            num_visual = _unpruned_length(feature, merge)
            if num_visual:
                region = list(input_tokens[place.offset : place.offset + place.length])
                unpruned, region_picks = self._zspa_unpruned_region(feature, region, num_visual)
                tokens.extend(unpruned)
                picks.extend(start + i for i in region_picks)
                place = dataclasses.replace(place, offset=start, length=len(unpruned), is_embed=None)
            else:
                tokens.extend(input_tokens[place.offset : place.offset + place.length])
                picks.extend(range(start, start + place.length))
                place = dataclasses.replace(place, offset=start)
            features.append(dataclasses.replace(feature, mm_position=place))
            st = feature.mm_position.offset + feature.mm_position.length
        picks.extend(range(len(tokens), len(tokens) + len(input_tokens) - st))
        tokens.extend(input_tokens[st:])
        unpruned, _ = super().get_mrope_input_positions(tokens, features)
        positions = unpruned[:, picks].contiguous()
        return positions, int(unpruned.max()) + 1 - len(input_tokens)

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
                    digits = mm[:, width:].round().long().to(device).view(-1, 3, 2)
                    offsets = digits[:, :, 0] * _RADIX + digits[:, :, 1]  # (t, h, w) per row
                    base = positions[0, where]  # every channel of a pruned run holds its base
                    positions[:, where] = base + offsets.T
                    embeddings[i] = mm[:, :width]
                cursor += mm.shape[0]
        delta = int(positions.max()) + 1 - num_tokens if positions.numel() else -num_tokens
        return embeddings, positions, delta

