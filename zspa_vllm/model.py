"""The worker half of the plugin: a mixin for vLLM multimodal model classes.

``embed_multimodal`` runs the vision encoder and projector as usual (the parent class),
then, for each image that carries our per-image fields, embeds the query ids with the
LLM's input embedding table, selects with ``zspa_vllm.prune`` and returns the kept rows.

vLLM's scheduler charges the encoder budget with each image's placeholder count, which
pruning shrinks, while the vision encoder still sees every patch: at keep_rate 0.1 it
would hand ~10x more images to one encoder call than the budget was sized for. So the
images of a call are encoded in groups whose UNPRUNED token count fits the budget.
"""

from __future__ import annotations

import torch

from zspa_vllm import observe
from zspa_vllm.processor import FIELD_NAMES
from zspa_vllm.prune import METHODS, select_tokens


def _per_item(value, count: int) -> list:
    """A batched field as one entry per image (vLLM stacks equal shapes, lists others)."""
    if isinstance(value, torch.Tensor):
        return list(value.unbind(0)) if value.dim() > 0 else [value] * count
    return list(value)


def encoder_groups(num_visual: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) ranges of images whose unpruned tokens fit ``budget``
    (an image larger than the budget goes alone)."""
    groups, start, used = [], 0, 0
    for i, n in enumerate(num_visual):
        if i > start and used + n > budget:
            groups.append((start, i))
            start, used = i, 0
        used += n
    groups.append((start, len(num_visual)))
    return groups


class PruningModelMixin:
    """Mix in before a vLLM model class that implements ``embed_multimodal``."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        # what the scheduler sizes one step's encoder work by
        self._zspa_encoder_budget = vllm_config.scheduler_config.max_num_encoder_input_tokens

    def embed_multimodal(self, **kwargs):
        fields = {name: kwargs.pop(name, None) for name in FIELD_NAMES}
        if fields["zspa_num_keep"] is None:
            return super().embed_multimodal(**kwargs)  # keeps every token: stock behaviour
        num_visual = [int(n) for n in _per_item(fields["zspa_num_visual"], 0)]
        embeddings = []
        for start, end in self._zspa_encoder_groups(kwargs, num_visual):
            group = self._zspa_slice_inputs(kwargs, start, end, len(num_visual))
            embeddings.extend(super().embed_multimodal(**group))
            observe.record_encoder_call(end - start, sum(num_visual[start:end]), len(num_visual))
        return self._zspa_prune(embeddings, fields)

    def _zspa_encoder_groups(self, kwargs, num_visual: list[int]) -> list[tuple[int, int]]:
        count = len(num_visual)
        if not all(len(value) == count for value in kwargs.values()):
            return [(0, count)]  # inputs not laid out one row per image: cannot split here
        return encoder_groups(num_visual, self._zspa_encoder_budget or sum(num_visual))

    def _zspa_slice_inputs(self, kwargs, start: int, end: int, count: int) -> dict:
        """Images [start, end) of a batch of ``count`` whose inputs all have one row per
        image (checked by _zspa_encoder_groups)."""
        if (start, end) == (0, count):
            return kwargs
        return {key: value[start:end] for key, value in kwargs.items()}

    def _zspa_prune(self, embeddings: list[torch.Tensor], fields) -> list[torch.Tensor]:
        count = len(embeddings)
        query_ids = _per_item(fields["zspa_query_ids"], count)
        num_keep = _per_item(fields["zspa_num_keep"], count)
        num_core = _per_item(fields["zspa_num_core"], count)
        methods = _per_item(fields["zspa_method"], count)
        embed_tokens = self.get_language_model().embed_input_ids
        pruned = []
        for visual, ids, keep, core, method in zip(embeddings, query_ids, num_keep, num_core, methods):
            keep, core, method = int(keep), int(core), METHODS[int(method)]
            ids = torch.as_tensor(ids, dtype=torch.long, device=visual.device).reshape(-1)
            query = embed_tokens(ids) if ids.numel() else None
            # core / keep gives back exactly `core` in select_tokens' floor(r * l + 0.5)
            kept = select_tokens(visual, query, keep, core / keep, method=method)
            observe.record(
                observe.Selection(visual.shape[0], tuple(kept.tolist()), tuple(ids.tolist()), method, core)
            )
            pruned.append(self._zspa_kept_rows(visual, kept, len(pruned)))
        return pruned

    def _zspa_kept_rows(self, visual: torch.Tensor, kept: torch.Tensor, item: int) -> torch.Tensor:
        """What replaces image ``item`` (of this call) in the prefill: its kept rows.
        M-RoPE families override this to append the kept tokens' grid positions."""
        return visual[kept]
