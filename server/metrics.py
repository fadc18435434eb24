"""Prometheus counters of visual tokens, served by vLLM's own ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter

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
