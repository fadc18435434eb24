"""The API-server half of the plugin: a mixin for vLLM multimodal processors.

Per request it reads the knobs from ``mm_processor_kwargs``, finds the query of each item
it prunes in the prompt (``zspa_vllm.core.query``) and replaces our knobs with ONE kwarg,
``zspa``, holding a ``PrunePlan``: the knobs, vLLM's own hash of every item and each
pruned item's query ids. A family prunes images, and videos where it says so
(``PRUNED_MODALITIES``); a video's budget is over all of its frames' tokens.

Identity. vLLM keys its processor, encoder and prefix caches by each item's hash, which
it computes from the item and *every* processor kwarg. ``_get_mm_hashes`` replaces that:
a pruned item's identity is its stock hash plus its own selection key (knobs and its own
query), so an item keeps its identity for as long as its query does (a conversation's
earlier images stay cached at every new turn), and every other item (a video of a family
that does not prune videos, say) keeps exactly stock vLLM's hash. A pruned item's identity
also carries its unpruned token count, which the scheduler charges its encoder budget
with (``zspa_vllm.engine.encoder_budget``).

The kwarg is removed before the Hugging Face processor runs; what the model needs is
added as per-item fields (``field_names(modality)``), for pixel inputs and precomputed
embeddings alike, and each pruned item's placeholder run is ``num_kept(n, keep_rate)``
tokens long.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from zspa_vllm.frontend import first_queries, request_counts
from zspa_vllm.core.params import PruneParams, parse_knobs, split_knobs
from zspa_vllm.core.prune_plan import PrunePlan
from zspa_vllm.core.selection import METHODS
from zspa_vllm.core.query import item_query_token_ids
from zspa_vllm.core.fields import ZSPA_KWARG, field_names, read_plan, split_plan, tag, without_plan
from zspa_vllm.frontend.request_counts import TALLY_KWARG

# Engine-wide knob defaults by id() of the MultiModalConfig they were configured on; the
# config is held too, so its id cannot be reused by a later engine's config.
_ENGINE_DEFAULTS: dict[int, tuple[object, PruneParams]] = {}


class PruningProcessorMixin:
    """Mix in before a vLLM ``BaseMultiModalProcessor`` subclass.

    Each family sets ``QUERY_PATTERN`` (a user turn of its chat template, group 1 = its
    content), ``PRUNED_MODALITIES`` if it prunes more than images, shortens each pruned
    item's placeholder run in ``_get_prompt_updates`` (``zspa_vllm.frontend.one_run`` does it for
    any family whose item is one run of embed positions) and implements:

    - ``_zspa_placeholder_id(modality) -> int``: the token its chat template puts once
      per item;
    - where vLLM's ``info.get_num_image_tokens(image_width=, image_height=)`` is not the
      count: ``_zspa_num_image_tokens`` (and ``_zspa_num_video_tokens`` for videos), or
      ``_zspa_visual_counts`` where the processed outputs say it better.
    """

    QUERY_PATTERN: ClassVar[Any] = None
    PRUNED_MODALITIES: ClassVar[tuple[str, ...]] = ("image",)

    # -- server-wide defaults (vLLM's --mm-processor-kwargs / LLM(mm_processor_kwargs=))

    def _zspa_defaults(self) -> PruneParams:
        mm_config = self.info.ctx.get_mm_config()
        configured = dict(mm_config.mm_processor_kwargs or {})
        knobs, rest = split_knobs(configured)
        if knobs:
            # Keep the knobs away from the HF processor, which vLLM merges these into;
            # remembered per config (several processors share one) as the defaults.
            _ENGINE_DEFAULTS[id(mm_config)] = (mm_config, parse_knobs(knobs))
            mm_config.mm_processor_kwargs = rest
        config, defaults = _ENGINE_DEFAULTS.get(id(mm_config), (None, PruneParams()))
        return defaults if config is mm_config else PruneParams()

    # -- vLLM overrides

    def apply(self, inputs, timing_ctx):
        # the only place the prompt is visible: resolve knobs and queries here
        knobs, rest = split_knobs(without_plan(inputs.hf_processor_mm_kwargs))
        tally_id = rest.pop(TALLY_KWARG, None)  # per HTTP request, so never in the hash
        params = parse_knobs(knobs, self._zspa_defaults())
        inputs = dataclasses.replace(inputs, hf_processor_mm_kwargs=rest)
        items = {m: len(inputs.mm_data_items.get(m) or ()) for m in self.PRUNED_MODALITIES}
        plan = None
        if params.prunes and any(items.values()):
            stock = super()._get_mm_hashes(inputs)  # vLLM's own, question-free identities
            tokenizer = self.info.get_tokenizer()
            queries = {
                m: item_query_token_ids(
                    tokenizer, inputs.prompt, self.QUERY_PATTERN, self._zspa_placeholder_id(m), count, params.query_scope
                )
                for m, count in items.items()
            }
            queries = first_queries.resolve(params, stock, queries)  # query_scope "first"
            plan = PrunePlan(
                params, {m: tuple(h) for m, h in stock.items()}, {m: tuple(map(tuple, q)) for m, q in queries.items()}
            )
            inputs = dataclasses.replace(inputs, hf_processor_mm_kwargs={**rest, ZSPA_KWARG: plan.encode()})
        if tally_id is not None:
            counts = [n for m in self.PRUNED_MODALITIES for n in self._zspa_token_counts(inputs.mm_data_items, rest, m)]
            kept = [plan.budget(n)[0] if plan else n for n in counts]
            request_counts.record(str(tally_id), params.prune_method if plan else "none", list(zip(counts, kept)))
        result = super().apply(inputs, timing_ctx)
        if plan is not None:
            for modality in plan.modalities:
                _check_placeholders(result, modality)
        return result

    def _get_mm_hashes(self, inputs):
        plan, kwargs = split_plan(inputs.hf_processor_mm_kwargs)
        if plan is None:
            return super()._get_mm_hashes(inputs)
        from vllm.multimodal.hasher import MultiModalHasher

        algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm
        hashes = {modality: list(h) for modality, h in plan.stock_hashes.items()}
        for modality in plan.modalities:
            hashes[modality] = [
                MultiModalHasher.hash_kwargs(
                    algorithm, **{f"zspa_{modality}": stock}, zspa_selection=plan.selection_key(modality, i)
                )
                for i, stock in enumerate(plan.stock_hashes[modality])
            ]
            # the scheduler charges the encoder budget with the unpruned count (none to
            # encode for precomputed embeddings)
            counts = self._zspa_token_counts(inputs.mm_data_items, kwargs, modality)
            if counts:
                hashes[modality] = [tag(h, n) for h, n in zip(hashes[modality], counts, strict=True)]
        return hashes

    def _get_cache_missing_processor_kwargs(self, inputs, mm_is_cached):
        kwargs = super()._get_cache_missing_processor_kwargs(inputs, mm_is_cached)
        plan = read_plan(kwargs)
        if plan is None:
            return kwargs
        # the HF processor runs on the items missing from vLLM's processor cache only
        missing = {modality: [not hit for hit in hits] for modality, hits in mm_is_cached.items()}
        return {**kwargs, ZSPA_KWARG: plan.only(missing).encode()}

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        # Every path to the HF processor starts here (some families call it directly, not
        # through _call_hf_processor): it never sees our kwarg. Runs for pixel inputs and
        # precomputed embeddings alike, on the items vLLM's processor cache misses.
        plan, rest = split_plan(hf_kwargs)
        processed = super()._apply_hf_processor_main(mm_items, rest)
        if plan is not None:
            for modality in plan.modalities:
                self._zspa_add_fields(plan, processed, modality, self._zspa_visual_counts(processed, modality, mm_items, rest))
        return processed

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        config = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if ZSPA_KWARG in hf_processor_mm_kwargs:
            from vllm.multimodal.inputs import MultiModalFieldConfig

            # metadata read on the host: kept there, so reading it never waits on the GPU
            for modality in self.PRUNED_MODALITIES:
                config.update(
                    {name: MultiModalFieldConfig.batched(modality, keep_on_cpu=True) for name in field_names(modality).values()}
                )
        return config

    def _zspa_num_image_tokens(self, width: int, height: int, mm_kwargs: Mapping[str, object]) -> int:
        """Unpruned visual tokens of an image of this size (vLLM's own count)."""
        return int(self.info.get_num_image_tokens(image_width=width, image_height=height))

    def _zspa_num_video_tokens(self, width: int, height: int, num_frames: int, mm_kwargs: Mapping[str, object]) -> int:
        """Unpruned visual tokens of a video of ``num_frames`` frames of this size, for
        families that prune videos."""
        raise NotImplementedError(f"{type(self).__name__} does not prune videos")

    def _zspa_frame_offsets(self, processed, item: int) -> list[list[int]]:
        """For families that prune videos and use M-RoPE: the (t, h, w) position offset
        of each grid step of video ``item`` from the video's first token."""
        raise NotImplementedError(f"{type(self).__name__} does not prune videos")

    # -- helpers

    def _zspa_token_counts(self, mm_items, mm_kwargs, modality: str) -> list[int]:
        """Unpruned visual tokens of each item of a prompt, from the image or frame
        sizes; none for precomputed embeddings."""
        from vllm.multimodal.parse import ImageProcessorItems, VideoProcessorItems

        items = mm_items.get(modality)
        if isinstance(items, ImageProcessorItems):
            sizes = [items.get_image_size(i) for i in range(len(items))]
            return [self._zspa_num_image_tokens(size.width, size.height, mm_kwargs) for size in sizes]
        if isinstance(items, VideoProcessorItems):
            counts = []
            for i in range(len(items)):
                video = items.get(i)
                # (frames, metadata) where the family needs metadata, which vLLM's own
                # get_frame_size / get_num_frames do not unwrap
                frames = VideoProcessorItems([video[0] if isinstance(video, tuple) else video])
                size = frames.get_frame_size(0)
                counts.append(self._zspa_num_video_tokens(size.width, size.height, frames.get_num_frames(0), mm_kwargs))
            return counts
        return []

    def _zspa_visual_counts(self, processed, modality: str, mm_items, mm_kwargs) -> list[int]:
        """The unpruned visual token count of each item the HF processor just processed
        (``mm_items``): precomputed embeddings by their rows, pixels by their size."""
        from vllm.multimodal.parse import EmbeddingItems

        items = mm_items.get(modality)
        if isinstance(items, EmbeddingItems):
            return [items.get_feature_size(i) for i in range(len(items))]
        return self._zspa_token_counts(mm_items, mm_kwargs, modality)

    def _zspa_add_fields(self, plan: PrunePlan, processed, modality: str, counts: list[int]) -> None:
        queries = plan.queries[modality]
        if len(counts) != len(queries):
            raise RuntimeError(f"zspa-vllm: {len(counts)} processed {modality} items for a plan of {len(queries)}")
        budgets = [plan.budget(n) for n in counts]
        method = METHODS.index(plan.params.prune_method)
        names = field_names(modality)
        processed[names["query_ids"]] = [torch.tensor(q, dtype=torch.long) for q in queries]
        processed[names["num_visual"]] = torch.tensor(counts, dtype=torch.long)
        processed[names["num_keep"]] = torch.tensor([keep for keep, _ in budgets], dtype=torch.long)
        processed[names["num_core"]] = torch.tensor([core for _, core in budgets], dtype=torch.long)
        processed[names["method"]] = torch.tensor([method] * len(counts), dtype=torch.long)
        keys = [list(plan.content_key(modality, i)) for i in range(len(counts))]
        processed[names["content_key"]] = torch.tensor(keys, dtype=torch.uint8).reshape(len(counts), 32)
        if modality == "video":
            offsets = [self._zspa_frame_offsets(processed, i) for i in range(len(counts))]
            processed[names["frame_offsets"]] = [torch.tensor(o, dtype=torch.long).reshape(-1, 3) for o in offsets]

    def _zspa_placeholder_count(self, num_visual: int, hf_processor_mm_kwargs: Mapping[str, Any]) -> int:
        """Placeholder tokens for an item of ``num_visual`` tokens under this request."""
        plan = read_plan(hf_processor_mm_kwargs)
        return num_visual if plan is None else plan.budget(num_visual)[0]


def _check_placeholders(result, modality: str) -> None:
    """Refuse a prompt whose shortened runs the model would not fill with exactly as many
    rows (a processing path that skipped our fields, for instance)."""
    num_keep = field_names(modality)["num_keep"]
    items = result["mm_kwargs"].get(modality, [])
    for i, (item, placeholder) in enumerate(zip(items, result["mm_placeholders"].get(modality, []))):
        if item is None:  # served from vLLM's processor cache: checked when first made
            continue
        slots = placeholder.get_num_embeds()
        rows = int(item[num_keep].data) if num_keep in item else None
        if rows != slots:
            raise ValueError(
                f"zspa-vllm: {modality} {i} has {slots} placeholder tokens but the model would hand "
                f"over {'all its' if rows is None else rows} rows; this input path cannot be pruned"
            )


class PruningInfoMixin:
    """Mix in before a vLLM ``BaseProcessingInfo`` whose family builds its HF processor
    (or merges HF processor kwargs) from the request's processor kwargs (the Qwen
    families do, in ``_get_prompt_updates`` and Qwen3-VL's ``_apply_hf_processor_main``)."""

    def get_hf_processor(self, **kwargs):
        # ours is for the hash and the placeholder count, not an HF processor argument
        # (vLLM would also load, and cache, one HF processor per distinct value)
        return super().get_hf_processor(**without_plan(kwargs))

    def _merge_and_resolve_mm_processor_kwargs(self, mm_kwargs):
        # Qwen3-VL calls its HF processors with these merged kwargs directly, not
        # through _call_hf_processor: ours must not reach them
        return super()._merge_and_resolve_mm_processor_kwargs(without_plan(mm_kwargs))
