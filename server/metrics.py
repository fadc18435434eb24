"""Prometheus metrics of the plugin, served by vLLM's own ``/metrics``.

Visual-token counters are counted here, in the API server, per HTTP request. The
encoder-output cache lives in the worker processes, which publish their counters as
small files (``zspa_vllm.encoder_cache``); a collector reads them at every scrape.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from zspa_vllm.encoder_cache import STATS_DIR_ENV, read_stats
from zspa_vllm.tally import Tally

VISUAL_TOKENS = Counter(
    "zspa_visual_tokens", "Visual tokens of the images of processed requests, before pruning.", ["method"]
)
VISUAL_TOKENS_KEPT = Counter(
    "zspa_visual_tokens_kept", "Visual tokens of the images of processed requests, after pruning.", ["method"]
)


def count(tally: Tally) -> None:
    if tally.visual_tokens:
        VISUAL_TOKENS.labels(tally.method).inc(tally.visual_tokens)
        VISUAL_TOKENS_KEPT.labels(tally.method).inc(tally.visual_tokens_kept)


class EncoderCacheCollector:
    """The workers' encoder-output cache counters, one series per (dp_rank, tp_rank)."""

    _SERIES = (
        ("hits", CounterMetricFamily, "Pruned images whose unpruned encoder output was cached (no vision encoder run)."),
        ("misses", CounterMetricFamily, "Pruned images the vision encoder ran for."),
        ("evictions", CounterMetricFamily, "Entries evicted to stay within the byte budget."),
        ("bytes", GaugeMetricFamily, "Bytes of unpruned encoder outputs held."),
        ("capacity_bytes", GaugeMetricFamily, "The byte budget (ZSPA_ENCODER_CACHE_MIB)."),
    )

    def collect(self):
        directory = os.environ.get(STATS_DIR_ENV)
        stats = read_stats(directory) if directory else {}
        for field, family, documentation in self._SERIES:
            metric = family(f"zspa_encoder_cache_{field}", documentation, labels=["dp_rank", "tp_rank"])
            for (dp, tp), values in stats.items():
                metric.add_metric([dp, tp], getattr(values, field))
            yield metric


_collector: EncoderCacheCollector | None = None


def register_encoder_cache_collector() -> None:
    """Once per process (re-entrant)."""
    global _collector
    if _collector is None:
        _collector = EncoderCacheCollector()
        REGISTRY.register(_collector)
