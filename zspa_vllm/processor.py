"""The API-server half of the plugin: a mixin for vLLM multimodal processors.

Per request it reads the knobs from ``mm_processor_kwargs``, cuts the query out of the
prompt, and replaces our knobs with ONE kwarg, ``zspa``, whose value names the canonical
knobs and the query ids. vLLM hashes every image together with its processor kwargs
(``ProcessorInputs.get_mm_hashes``), so that value makes the encoder cache, the processor
cache and the prefix cache per question and per budget. The kwarg is removed again
before the Hugging Face processor runs; what the model needs is added as per-image
fields (``zspa_query_ids``, ``zspa_num_visual``, ``zspa_num_keep``, ``zspa_num_core``,
``zspa_method``), and the
placeholder run of each image is ``num_kept(n, keep_rate)`` tokens long.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from zspa_vllm import tally
from zspa_vllm.params import PruneParams, parse_knobs, split_knobs
from zspa_vllm.prune import METHODS, num_kept
from zspa_vllm.query import query_token_ids
from zspa_vllm.tally import TALLY_KWARG

ZSPA_KWARG = "zspa"
FIELD_NAMES = ("zspa_query_ids", "zspa_num_visual", "zspa_num_keep", "zspa_num_core", "zspa_method")

# Engine-wide knob defaults by id() of the MultiModalConfig they were configured on; the
# config is held too, so its id cannot be reused by a later engine's config.
_ENGINE_DEFAULTS: dict[int, tuple[object, PruneParams]] = {}


@dataclasses.dataclass(frozen=True)
class PruneRequest:
    """What one request asks of the model: its knobs and its query ids."""

    params: PruneParams
    query_ids: tuple[int, ...]

    def encode(self) -> str:
        """Canonical text (knob values are already rounded by parse_knobs): equal
        requests encode, and so hash, alike."""
        p = self.params
        return json.dumps(
            [p.prune_method, p.keep_rate, p.core_ratio, list(self.query_ids)], separators=(",", ":")
        )

    @classmethod
    def decode(cls, value: str) -> PruneRequest:
        method, keep_rate, core_ratio, query = json.loads(value)
        return cls(PruneParams(keep_rate, core_ratio, method), tuple(query))

    def budget(self, num_visual: int) -> tuple[int, int]:
        """(tokens kept, of which core) for an image of ``num_visual`` tokens."""
        keep = num_kept(num_visual, self.params.keep_rate)
        if self.params.prune_method == "relevance":
            return keep, keep
        if self.params.prune_method == "divprune":
            return keep, 0
        return keep, math.floor(self.params.core_ratio * keep + 0.5)


class PruningProcessorMixin:
    """Mix in before a vLLM ``BaseMultiModalProcessor`` subclass.

    Subclasses set ``QUERY_PATTERN`` (the last user turn of the family's chat template,
    group 1 = its text) and implement ``_zspa_visual_counts``.
    """

    QUERY_PATTERN: ClassVar[re.Pattern[str] | None] = None

    # -- hooks for each family

    def _zspa_visual_counts(self, hf_data: Mapping[str, object], processed) -> list[int]:
        """Unpruned visual token count of each image, in order."""
        raise NotImplementedError

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
        # the only place the prompt is visible: resolve knobs and query here
        knobs, rest = split_knobs(inputs.hf_processor_mm_kwargs)
        rest.pop(ZSPA_KWARG, None)
        tally_id = rest.pop(TALLY_KWARG, None)  # per HTTP request, so never in the hash
        params = parse_knobs(knobs, self._zspa_defaults())
        request = None
        if params.prunes:
            query = query_token_ids(self.info.get_tokenizer(), inputs.prompt, self.QUERY_PATTERN)
            request = PruneRequest(params, tuple(query))
            rest[ZSPA_KWARG] = request.encode()
        if tally_id is not None:
            counts = self._zspa_image_token_counts(inputs.mm_data_items, rest)
            kept = [request.budget(n)[0] if request else n for n in counts]
            tally.record(str(tally_id), params.prune_method if request else "none", list(zip(counts, kept)))
        return super().apply(dataclasses.replace(inputs, hf_processor_mm_kwargs=rest), timing_ctx)

    def _call_hf_processor(self, hf_data, hf_kwargs):
        hf_kwargs = dict(hf_kwargs)
        encoded = hf_kwargs.pop(ZSPA_KWARG, None)
        processed = super()._call_hf_processor(hf_data, hf_kwargs)
        if encoded is not None:
            self._zspa_add_fields(PruneRequest.decode(encoded), hf_data, processed)
        return processed

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        config = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if ZSPA_KWARG in hf_processor_mm_kwargs:
            from vllm.multimodal.inputs import MultiModalFieldConfig

            config.update({name: MultiModalFieldConfig.batched("image") for name in FIELD_NAMES})
        return config

    def _zspa_num_image_tokens(self, width: int, height: int, mm_kwargs: Mapping[str, object]) -> int:
        """Unpruned visual tokens of an image of this size (vLLM's own count)."""
        return int(self.info.get_num_image_tokens(image_width=width, image_height=height))

    # -- helpers

    def _zspa_image_token_counts(self, mm_items, mm_kwargs) -> list[int]:
        """Unpruned visual tokens of each image of a prompt, from the image sizes; none
        for precomputed embeddings. (The per-image model fields count from the HF
        outputs in _zspa_visual_counts instead: the HF processor only sees the images
        vLLM's processor cache misses, while the tally needs every image.)"""
        from vllm.multimodal.parse import ImageProcessorItems

        images = mm_items.get("image")
        if not isinstance(images, ImageProcessorItems):
            return []
        sizes = [images.get_image_size(i) for i in range(len(images))]
        return [self._zspa_num_image_tokens(size.width, size.height, mm_kwargs) for size in sizes]

    def _zspa_add_fields(self, request: PruneRequest, hf_data, processed) -> None:
        counts = self._zspa_visual_counts(hf_data, processed)
        budgets = [request.budget(n) for n in counts]
        processed["zspa_query_ids"] = torch.tensor([request.query_ids] * len(counts), dtype=torch.long).reshape(
            len(counts), len(request.query_ids)
        )
        processed["zspa_num_visual"] = torch.tensor(counts, dtype=torch.long)
        processed["zspa_num_keep"] = torch.tensor([keep for keep, _ in budgets], dtype=torch.long)
        processed["zspa_num_core"] = torch.tensor([core for _, core in budgets], dtype=torch.long)
        method = request.params.prune_method
        processed["zspa_method"] = torch.tensor([METHODS.index(method)] * len(counts), dtype=torch.long)

    def _zspa_placeholder_count(self, num_visual: int, hf_processor_mm_kwargs: Mapping[str, Any]) -> int:
        """Placeholder tokens for an image of ``num_visual`` tokens under this request."""
        encoded = hf_processor_mm_kwargs.get(ZSPA_KWARG)
        if encoded is None:
            return num_visual
        return PruneRequest.decode(encoded).budget(num_visual)[0]


class PruningInfoMixin:
    """Mix in before a vLLM ``BaseProcessingInfo`` whose family builds its HF processor
    from the request's processor kwargs (Qwen2-VL does, in ``_get_prompt_updates``)."""

    def get_hf_processor(self, **kwargs):
        # ours is for the hash and the placeholder count, not an HF processor argument
        # (vLLM would also load, and cache, one HF processor per distinct value)
        kwargs.pop(ZSPA_KWARG, None)
        return super().get_hf_processor(**kwargs)
