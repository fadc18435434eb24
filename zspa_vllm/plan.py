"""What the processor decides for one pruned prompt, and hands on through vLLM.

A ``PrunePlan`` holds the request's knobs, vLLM's own hash of every multimodal item of
the prompt (its *content* identity, question-free) and each image's query token ids. It
travels as one processor kwarg (``zspa``): our ``_get_mm_hashes`` turns it into the
item identities vLLM caches by (each image: its content hash + its own selection key;
every other item: vLLM's own hash, untouched), the placeholder count reads the budget
from it, and the per-image model fields are written from it. Pure Python: no vLLM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence

from zspa_vllm.params import PruneParams
from zspa_vllm.prune import num_kept


@dataclasses.dataclass(frozen=True)
class PrunePlan:
    params: PruneParams
    stock_hashes: Mapping[str, tuple[str, ...]]  # vLLM's hash of each item, by modality
    image_queries: tuple[tuple[int, ...], ...]  # the query ids of each image, in order

    def __post_init__(self) -> None:
        num_images = len(self.stock_hashes.get("image", ()))
        if num_images != len(self.image_queries):
            raise ValueError(f"a plan for {num_images} images got {len(self.image_queries)} queries")

    def encode(self) -> str:
        """Canonical text (knob values are already rounded by parse_knobs)."""
        p = self.params
        return json.dumps(
            {
                "knobs": [p.prune_method, p.keep_rate, p.core_ratio, p.query_scope],
                "hashes": {m: list(h) for m, h in sorted(self.stock_hashes.items())},
                "queries": [list(q) for q in self.image_queries],
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, value: str) -> PrunePlan:
        data = json.loads(value)
        method, keep_rate, core_ratio, scope = data["knobs"]
        return cls(
            PruneParams(keep_rate, core_ratio, method, scope),
            {m: tuple(h) for m, h in data["hashes"].items()},
            tuple(tuple(q) for q in data["queries"]),
        )

    def budget(self, num_visual: int) -> tuple[int, int]:
        """(tokens kept, of which core) for an image of ``num_visual`` tokens."""
        keep = num_kept(num_visual, self.params.keep_rate)
        if self.params.prune_method == "relevance":
            return keep, keep
        if self.params.prune_method == "divprune":
            return keep, 0
        return keep, math.floor(self.params.core_ratio * keep + 0.5)

    def selection_key(self, image: int) -> str:
        """What decides image ``image``'s selection besides its pixels: its knobs and
        query, minus what its method ignores (divprune: the query and core_ratio;
        relevance: core_ratio), so equal selections share one cache entry."""
        p = self.params
        key: list = [p.prune_method, p.keep_rate]
        if p.prune_method == "zspa":
            key.append(p.core_ratio)
        if p.prune_method != "divprune":
            key.append(list(self.image_queries[image]))
        return json.dumps(key, separators=(",", ":"))

    def content_key(self, image: int) -> bytes:
        """32 bytes naming image ``image``'s unpruned encoder output: a digest of vLLM's
        own hash of it (pixels, processor kwargs, model), never of the question."""
        return hashlib.sha256(self.stock_hashes["image"][image].encode()).digest()

    def only(self, keep: Mapping[str, Sequence[bool]]) -> PrunePlan:
        """The plan of the items whose flag in ``keep`` (by modality) is true, in order."""
        hashes = {m: tuple(h for h, k in zip(hs, keep.get(m, [True] * len(hs))) if k) for m, hs in self.stock_hashes.items()}
        image_keep = keep.get("image", [True] * len(self.image_queries))
        queries = tuple(q for q, k in zip(self.image_queries, image_keep) if k)
        return PrunePlan(self.params, hashes, queries)
