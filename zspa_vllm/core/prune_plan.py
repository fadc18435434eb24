"""What the processor decides for one pruned prompt, and hands on through vLLM.

A ``PrunePlan`` holds the request's knobs, vLLM's own hash of every multimodal item of
the prompt (its *content* identity, question-free) and the query token ids of each item
the family prunes (images; videos too where the family prunes them), by modality. It
travels as one processor kwarg (``zspa``): our ``_get_mm_hashes`` turns it into the
item identities vLLM caches by (each pruned item: its content hash + its own selection
key; every other item: vLLM's own hash, untouched), the placeholder count reads the
budget from it, and the per-item model fields are written from it. Pure Python: no vLLM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence

from zspa_vllm.core.params import PruneParams
from zspa_vllm.core.selection import num_kept

Queries = tuple[tuple[int, ...], ...]
# methods whose selection ignores the question (and core_ratio): an image keeps one
# identity, and its prefix cache, across questions
QUESTION_FREE = ("divprune", "random")


@dataclasses.dataclass(frozen=True)
class PrunePlan:
    params: PruneParams
    stock_hashes: Mapping[str, tuple[str, ...]]  # vLLM's hash of each item, by modality
    queries: Mapping[str, Queries]  # the query ids of each pruned item, by modality, in order

    def __post_init__(self) -> None:
        for modality, queries in self.queries.items():
            num_items = len(self.stock_hashes.get(modality, ()))
            if num_items != len(queries):
                raise ValueError(f"a plan for {num_items} {modality} items got {len(queries)} queries")

    @property
    def modalities(self) -> tuple[str, ...]:
        """The pruned modalities that have items in this plan."""
        return tuple(m for m, q in sorted(self.queries.items()) if q)

    def encode(self) -> str:
        """Canonical text (knob values are already rounded by parse_knobs)."""
        p = self.params
        return json.dumps(
            {
                "knobs": [p.prune_method, p.keep_rate, p.core_ratio, p.query_scope],
                "hashes": {m: list(h) for m, h in sorted(self.stock_hashes.items())},
                "queries": {m: [list(q) for q in qs] for m, qs in sorted(self.queries.items())},
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
            {m: tuple(tuple(q) for q in qs) for m, qs in data["queries"].items()},
        )

    def budget(self, num_visual: int) -> tuple[int, int]:
        """(tokens kept, of which core) for an item of ``num_visual`` visual tokens."""
        keep = num_kept(num_visual, self.params.keep_rate)
        if self.params.prune_method == "relevance":
            return keep, keep
        if self.params.prune_method in QUESTION_FREE:
            return keep, 0
        return keep, math.floor(self.params.core_ratio * keep + 0.5)

    def selection_key(self, modality: str, item: int) -> str:
        """What decides an item's selection besides its pixels: its knobs and query,
        minus what its method ignores (divprune, random: the query and core_ratio;
        relevance: core_ratio), so equal selections share one cache entry."""
        p = self.params
        key: list = [p.prune_method, p.keep_rate]
        if p.prune_method == "zspa":
            key.append(p.core_ratio)
        if p.prune_method not in QUESTION_FREE:
            key.append(list(self.queries[modality][item]))
        return json.dumps(key, separators=(",", ":"))

    def content_key(self, modality: str, item: int) -> bytes:
        """32 bytes naming an item's unpruned encoder output: a digest of vLLM's own hash
        of it (pixels or frames, processor kwargs, model), never of the question."""
        return hashlib.sha256(self.stock_hashes[modality][item].encode()).digest()

    def only(self, keep: Mapping[str, Sequence[bool]]) -> PrunePlan:
        """The plan of the items whose flag in ``keep`` (by modality) is true, in order."""

        def kept(modality: str, values: Sequence) -> tuple:
            flags = keep.get(modality, [True] * len(values))
            return tuple(v for v, k in zip(values, flags) if k)

        hashes = {m: kept(m, hs) for m, hs in self.stock_hashes.items()}
        return PrunePlan(self.params, hashes, {m: kept(m, qs) for m, qs in self.queries.items()})
