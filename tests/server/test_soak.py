"""A short mixed-load soak in make test (benchmarks/soak.py; ``make soak`` runs ten
minutes): no 5xx, no hang, every kept count right, the canary unchanged, memory flat
after warm-up."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks import soak
from tests.server.conftest import API_KEY

pytestmark = pytest.mark.server

SECONDS = 60
# a minute is short for vLLM's caches to settle (make soak holds 256 MiB over ten minutes):
# at the ~1000 requests of the second half here, this catches a leak of about half a MB
# per request (an image's data kept per request)
MAX_GROWTH_MIB = 512


def test_a_minute_of_mixed_load(server, model):
    report = asyncio.run(soak.run(server.base_url, API_KEY, SECONDS, pid=server.proc.pid, model=model, max_growth_mib=MAX_GROWTH_MIB))
    print(f"\n[soak] {report.as_dict()}")
    assert report.ok, report.failures
    # every kind of client ran, and often enough to mean something
    assert set(report.counts) == {"fresh", "streamed", "chat", "same_image", "hostile", "dropped", "canary"}
    assert min(report.counts.values()) >= 3, report.counts
    assert report.canaries >= 3
    assert set(report.rss_mib) == {"after_warmup", "end", "growth"}


def test_the_soak_fails_on_what_it_checks():
    """Its checks can fail: a wrong kept count, a drifted canary and memory growth each
    make a failing report."""
    report = soak.Report(max_growth_mib=10)
    checker = soak.Soak("http://127.0.0.1:9", None, "m", report)
    checker.check_kept("fresh", {"visual_tokens": 144, "visual_tokens_kept": 20}, 0.1)  # 15 expected
    checker.check_kept("fresh", {"visual_tokens": 144, "visual_tokens_kept": 15}, 0.1)
    assert report.failures == ["fresh: kept 20 of 144 at keep_rate 0.1, expected 15"]
    checker.check_kept("fresh", None, 0.1)
    assert not report.ok and len(report.failures) == 2
