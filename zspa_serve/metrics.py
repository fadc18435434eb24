"""Prometheus metrics of the plugin, served by vLLM's own ``/metrics``.

Visual-token counters are counted here, in the API server, per HTTP request. The
encoder-output cache and the phase timings live in the worker processes, which publish
their counters as small files (``zspa_vllm.core.stats_files``); a collector reads them at
every scrape.
"""

from __future__ import annotations

import os
import re

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from zspa_vllm.worker import encoder_cache
from zspa_vllm.worker import phase_timings
from zspa_vllm import envs
from zspa_vllm.frontend.request_counts import Tally

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


class WorkerStatsCollector:
    """The workers' counters, one series per (dp_rank, tp_rank)."""

    _SERIES = (  # (reader, metric name, field, type, documentation)
        (encoder_cache.read_stats, "zspa_encoder_cache_hits", "hits", CounterMetricFamily,
         "Pruned images whose unpruned encoder output was cached (no vision encoder run)."),
        (encoder_cache.read_stats, "zspa_encoder_cache_misses", "misses", CounterMetricFamily,
         "Pruned images the vision encoder ran for."),
        (encoder_cache.read_stats, "zspa_encoder_cache_evictions", "evictions", CounterMetricFamily,
         "Entries evicted to stay within the byte budget."),
        (encoder_cache.read_stats, "zspa_encoder_cache_bytes", "bytes", GaugeMetricFamily,
         "Bytes of unpruned encoder outputs held."),
        (encoder_cache.read_stats, "zspa_encoder_cache_capacity_bytes", "capacity_bytes", GaugeMetricFamily,
         "The byte budget (ZSPA_ENCODER_CACHE_MIB)."),
        (phase_timings.read_stats, "zspa_vision_encoder_seconds", "encoder_seconds", CounterMetricFamily,
         "Seconds in the vision encoder and projector (ZSPA_PHASE_TIMINGS=1 only)."),
        (phase_timings.read_stats, "zspa_vision_encoder_items", "encoder_items", CounterMetricFamily,
         "Images and videos the vision encoder ran for (ZSPA_PHASE_TIMINGS=1 only)."),
        (phase_timings.read_stats, "zspa_selection_seconds", "selection_seconds", CounterMetricFamily,
         "Seconds selecting visual tokens (ZSPA_PHASE_TIMINGS=1 only)."),
        (phase_timings.read_stats, "zspa_selection_items", "selection_items", CounterMetricFamily,
         "Images and videos selected on (ZSPA_PHASE_TIMINGS=1 only)."),
    )

    def collect(self):
        directory = envs.get(envs.STATS_DIR)
        readers = {reader for reader, *_ in self._SERIES}
        stats = {reader: reader(directory) if directory else {} for reader in readers}
        for reader, name, field, family, documentation in self._SERIES:
            metric = family(name, documentation, labels=["dp_rank", "tp_rank"])
            for (dp, tp), values in stats[reader].items():
                metric.add_metric([dp, tp], getattr(values, field))
            yield metric


_collector: WorkerStatsCollector | None = None


def register_worker_stats_collector(app) -> None:
    """The workers' series beside vLLM's on ``app``'s /metrics (re-entrant). One API server:
    vLLM serves the default registry, so ours joins it. Several (``--api-server-count``,
    data parallelism): vLLM serves a registry that reads every process's multiprocess
    files and nothing else, so a /metrics route of ours, ahead of vLLM's, serves that same
    registry with our collector added."""
    global _collector
    if _collector is None:
        _collector = WorkerStatsCollector()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None:
        if _collector not in REGISTRY._collector_to_names:
            REGISTRY.register(_collector)
        return
    from prometheus_client import make_asgi_app
    from starlette.routing import Mount
    from vllm.v1.metrics.prometheus import get_prometheus_registry

    registry = get_prometheus_registry()  # a new registry over the multiprocess files, as vLLM's
    registry.register(_collector)
    route = Mount("/metrics", make_asgi_app(registry=registry))
    route.path_regex = re.compile("^/metrics(?P<path>.*)$")  # as vLLM's: /metrics without a redirect
    app.router.routes.insert(0, route)
