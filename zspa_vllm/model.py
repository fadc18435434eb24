"""The worker half of the plugin: a mixin for vLLM multimodal model classes.

``embed_multimodal`` runs the vision encoder and projector as usual (the parent class),
then, for each image that carries our per-image fields, embeds the query ids with the
LLM's input embedding table, selects with ``zspa_vllm.prune`` and returns the kept rows.
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


class PruningModelMixin:
    """Mix in before a vLLM model class that implements ``embed_multimodal``."""

    def embed_multimodal(self, **kwargs):
        fields = {name: kwargs.pop(name, None) for name in FIELD_NAMES}
        embeddings = super().embed_multimodal(**kwargs)
        if fields["zspa_num_keep"] is None:
            return embeddings  # a request that keeps every token: stock behaviour
        return self._zspa_prune(list(embeddings), fields)

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
            pruned.append(visual[kept])
        return pruned
