"""The worker half of the plugin: a mixin for vLLM multimodal model classes.

``embed_multimodal`` gets, for each item (image, or video where the family prunes videos)
that carries our per-item fields, its unpruned projected tokens: from the encoder-output
cache (``zspa_vllm.worker.encoder_cache``) when the same item was encoded before, else from the
vision encoder and projector (the parent class), or as given for precomputed embeddings.
It then embeds the item's query ids with the LLM's input embedding table, selects with
``zspa_vllm.core.selection`` and returns the kept rows. vLLM calls it once per modality.

The scheduler charges its encoder budget with each item's unpruned tokens
(``zspa_vllm.engine.encoder_budget``). Where it does not (a user's own ``scheduler_cls``), it
hands one call up to 1/keep_rate times the images the budget was sized for, so the
items of a call are encoded in groups whose UNPRUNED token count fits the budget.
"""

from __future__ import annotations

import dataclasses

import torch

from zspa_vllm.worker import selection_log
from zspa_vllm.worker import phase_timings
from zspa_vllm.worker.encoder_cache import EncoderOutputCache, stats_file
from zspa_vllm.core.fields import MODALITIES, field_names
from zspa_vllm.core.selection import METHODS, random_seed, selection_order_with_core
from zspa_vllm import envs


def _per_item(value, count: int) -> list:
    """A batched field as one entry per image (vLLM stacks equal shapes, lists others)."""
    if isinstance(value, torch.Tensor):
        return list(value.unbind(0)) if value.dim() > 0 else [value] * count
    return list(value)


def _count_items(kwargs) -> int:
    """Items in a stock ``embed_multimodal`` call: the length of its grid / pixel input."""
    for name in ("image_grid_thw", "video_grid_thw", "pixel_values", "image_embeds", "pixel_values_videos"):
        value = kwargs.get(name)
        if value is not None:
            return len(value)
    return 0


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
        from vllm.distributed import get_tensor_model_parallel_rank

        # data_parallel_index: a dense model's DP engines each reset data_parallel_rank to 0
        ranks = (vllm_config.parallel_config.data_parallel_index, get_tensor_model_parallel_rank())
        self._zspa_cache = EncoderOutputCache(envs.encoder_cache_bytes(), stats_file(*ranks))
        self._zspa_cache.publish()  # the counters exist (at zero) from the start
        self._zspa_timer = phase_timings.PhaseTimer(envs.get(envs.PHASE_TIMINGS), phase_timings.stats_file(*ranks))
        self._zspa_timer.publish()

    def embed_multimodal(self, **kwargs):
        by_modality = {m: {f: kwargs.pop(name, None) for f, name in field_names(m).items()} for m in MODALITIES}
        pruned = [m for m, fields in by_modality.items() if fields["num_keep"] is not None]
        if not pruned:  # keeps every token: stock behaviour
            with self._zspa_timer.timed("encoder", _count_items(kwargs), self._zspa_device()):
                embeddings = super().embed_multimodal(**kwargs)
            self._zspa_timer.publish()
            return embeddings
        if len(pruned) > 1:
            raise RuntimeError(f"zspa-vllm: one embed_multimodal call got pruned items of {pruned}")
        (modality,) = pruned
        fields = by_modality[modality]
        num_visual = [int(n) for n in _per_item(fields["num_visual"], 0)]
        if f"{modality}_embeds" in kwargs:  # precomputed: nothing to encode, select on them
            embeddings = list(super().embed_multimodal(**kwargs))
        else:
            keys = [bytes(key.tolist()) for key in _per_item(fields["content_key"], len(num_visual))]
            embeddings = self._zspa_encode(kwargs, num_visual, keys)
        for visual, n in zip(embeddings, num_visual):
            if visual.shape[0] != n:
                raise RuntimeError(f"zspa-vllm: a {modality} item of {n} tokens came back with {visual.shape[0]} rows")
        with self._zspa_timer.timed("selection", len(embeddings), self._zspa_device()):
            pruned = self._zspa_prune(embeddings, fields, modality)
        self._zspa_timer.publish()
        return pruned

    def _zspa_device(self) -> torch.device:
        return next(self.parameters()).device

    def _zspa_encode(self, kwargs, num_visual: list[int], keys: list[bytes]) -> list[torch.Tensor]:
        """Each item's unpruned tokens: cached ones from the cache, the others (each
        distinct item once) through the vision encoder in budget-sized groups."""
        count = len(keys)
        found: dict[bytes, torch.Tensor] = {}
        todo: list[int] = []  # first index of each image to encode
        for i, key in enumerate(keys):
            if key in found or any(keys[j] == key for j in todo):
                continue
            cached = self._zspa_cache.get(key)  # a miss is counted even with the cache off
            if cached is None:
                todo.append(i)
            else:
                found[key] = cached
        if not todo:
            groups = []
        elif self._zspa_select_inputs(kwargs, todo, count) is None:
            todo = list(range(count))  # inputs not laid out per item: encode them all at once
            groups = [(0, count)]
        else:
            groups = encoder_groups([num_visual[i] for i in todo], self._zspa_encoder_budget or sum(num_visual))
        for start, end in groups:
            indices = todo[start:end]
            with self._zspa_timer.timed("encoder", len(indices), self._zspa_device()):
                encoded = super().embed_multimodal(**self._zspa_select_inputs(kwargs, indices, count))
            selection_log.record_encoder_call(len(indices), sum(num_visual[i] for i in indices), count)
            for i, visual in zip(indices, encoded):
                found[keys[i]] = visual
                self._zspa_cache.put(keys[i], visual)
        self._zspa_cache.publish()
        return [found[key] for key in keys]

    def _zspa_select_inputs(self, kwargs, indices: list[int], count: int) -> dict | None:
        """The encoder inputs of items ``indices`` of a batch of ``count``, or None if
        the inputs are not laid out one entry per item. Default: every input holds one
        entry (tensor row or list element) per item."""
        if indices == list(range(count)):
            return kwargs

        def one_per_item(value) -> bool:  # not flat over items' tiles, nor shared (0-d)
            sized = isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.dim() > 0)
            return sized and len(value) == count

        if not all(one_per_item(value) for value in kwargs.values()):
            return None
        return {
            key: value[torch.tensor(indices)] if isinstance(value, torch.Tensor) else [value[i] for i in indices]
            for key, value in kwargs.items()
        }

    def _zspa_prune(self, embeddings: list[torch.Tensor], fields, modality: str) -> list[torch.Tensor]:
        count = len(embeddings)
        query_ids = _per_item(fields["query_ids"], count)
        num_keep = _per_item(fields["num_keep"], count)
        num_core = _per_item(fields["num_core"], count)
        methods = _per_item(fields["method"], count)
        content_keys = _per_item(fields["content_key"], count)
        embed_tokens = self.get_language_model().embed_input_ids
        pruned = []
        for visual, ids, keep, core, method, key in zip(embeddings, query_ids, num_keep, num_core, methods, content_keys):
            keep, core, method = int(keep), int(core), METHODS[int(method)]
            seed = random_seed(bytes(key.tolist())) if method == "random" else 0  # the others ignore it
            ids = torch.as_tensor(ids, dtype=torch.long, device=visual.device).reshape(-1)
            query = embed_tokens(ids) if ids.numel() else None
            # no value check: it is the selection's only wait for the device
            features = self._zspa_selection_features(visual)
            order = selection_order_with_core(features, query, keep, core, method=method, check_values=False, seed=seed)
            kept = torch.sort(order).values  # what select_tokens returns; the order tells core from diversity
            selection_log.record(selection_log.Selection(visual.shape[0], kept, ids, method, core, modality, order))
            pruned.append(self._zspa_kept_rows(visual, kept, modality, len(pruned)))
        return pruned

    def _zspa_selection_features(self, visual: torch.Tensor) -> torch.Tensor:
        """The columns of an item's rows that selection compares with the query (and
        with each other). Families whose rows carry more than the LLM input override it."""
        return visual

    def _zspa_kept_rows(self, visual: torch.Tensor, kept: torch.Tensor, modality: str, item: int) -> torch.Tensor:
        """What replaces item ``item`` (of this call) in the prefill: its kept rows.
        M-RoPE families override this to append the kept tokens' grid positions."""
        return visual[kept]


class NoEncoderGraphForPrunedMixin:
    """Mix in before a vLLM model class that captures its vision encoder in a CUDA graph
    (``get_encoder_cudagraph_config``): a captured graph's outputs go straight to the
    prefill, skipping ``embed_multimodal`` and so the pruning; pruned modalities run
    eagerly (the others keep their graphs)."""

    def get_encoder_cudagraph_config(self):
        config = super().get_encoder_cudagraph_config()
        return dataclasses.replace(config, modalities=[m for m in config.modalities if m not in MODALITIES])
