"""A worker-side LRU of unpruned projected image tokens, keyed by image content.

vLLM's own encoder cache is keyed by an item's identity, which for a pruned image
includes its question (``zspa_vllm.frontend.processor``): the same image asked another question,
or with another budget, is a miss there and would run the vision encoder again. This
cache holds the encoder's *unpruned* output under a digest of vLLM's question-free hash
of the image, so selection runs per question on the cached tokens instead.

Bounded in bytes (``ZSPA_ENCODER_CACHE_MIB``, ``zspa_vllm.core.params``; 0 switches it off),
least recently used first out. Every tensor-parallel rank sees the same calls in the
same order and stores tensors of the same size, so every rank evicts identically.
Entries stay on the device the encoder produced them on. Hit and miss counts are
published for ``/metrics`` (``zspa_vllm.core.stats_files``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from zspa_vllm.core import stats_files

_STATS_KIND = "encoder-cache"


@dataclass
class CacheStats:
    hits: int = 0  # pruned images whose unpruned tokens were found
    misses: int = 0  # pruned images the vision encoder had to run for (cache on or off)
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    capacity_bytes: int = 0


class EncoderOutputCache:
    def __init__(self, capacity_bytes: int, stats_file: Path | None = None) -> None:
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.stats = CacheStats(capacity_bytes=capacity_bytes)
        self._stats_file = stats_file

    def get(self, key: bytes) -> torch.Tensor | None:
        """The cached tokens for ``key`` (counted as a hit or a miss)."""
        tensor = self._entries.get(key)
        if tensor is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return tensor

    def put(self, key: bytes, tensor: torch.Tensor) -> None:
        size = _nbytes(tensor)
        if size > self.stats.capacity_bytes or key in self._entries:
            return
        if tensor.untyped_storage().nbytes() > size:
            tensor = tensor.clone()  # a view into a batch would keep the whole batch alive
        while self.stats.bytes + size > self.stats.capacity_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.stats.bytes -= _nbytes(evicted)
            self.stats.evictions += 1
        self._entries[key] = tensor
        self.stats.bytes += size
        self.stats.entries = len(self._entries)

    def publish(self) -> None:
        """Write the counters where the HTTP layer reads them."""
        self.stats.entries = len(self._entries)
        stats_files.publish(self._stats_file, self.stats)


def stats_file(data_parallel_rank: int, tensor_parallel_rank: int) -> Path | None:
    """Where this worker publishes its counters (None when no stats directory is set)."""
    return stats_files.stats_file(_STATS_KIND, data_parallel_rank, tensor_parallel_rank)


def read_stats(directory: str | os.PathLike) -> dict[tuple[str, str], CacheStats]:
    """Every worker's published counters, by (data-parallel rank, tensor-parallel rank)."""
    return stats_files.read_stats(directory, _STATS_KIND, CacheStats)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
