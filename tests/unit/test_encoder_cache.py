"""The worker-side encoder-output cache: byte bound, LRU order, published counters."""

import json

import torch

from zspa_vllm.worker.encoder_cache import EncoderOutputCache, read_stats, stats_file


def tokens(rows: int, value: float = 1.0) -> torch.Tensor:
    return torch.full((rows, 4), value, dtype=torch.float32)  # 16 bytes a row


def test_hits_misses_and_least_recently_used_eviction():
    cache = EncoderOutputCache(capacity_bytes=3 * 160)  # three entries of 10 rows
    assert cache.get(b"a") is None
    for key in (b"a", b"b", b"c"):
        cache.put(key, tokens(10))
    assert cache.get(b"a") is not None  # a is now the most recently used
    cache.put(b"d", tokens(10))  # evicts b, the least recently used
    assert cache.get(b"b") is None
    assert all(cache.get(k) is not None for k in (b"a", b"c", b"d"))
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (4, 2, 1)
    assert cache.stats.bytes == 3 * 160 and cache.stats.entries == 3


def test_never_exceeds_its_budget_and_skips_what_cannot_fit():
    cache = EncoderOutputCache(capacity_bytes=400)
    cache.put(b"big", tokens(26))  # 416 bytes > budget: not stored
    assert cache.get(b"big") is None and cache.stats.bytes == 0
    for i in range(20):
        cache.put(bytes([i]), tokens(7))  # 112 bytes each: three fit
        assert cache.stats.bytes <= 400
    assert cache.stats.entries == 3 and cache.stats.evictions == 17


def test_zero_budget_stores_nothing():
    cache = EncoderOutputCache(capacity_bytes=0)
    cache.put(b"a", tokens(1))
    assert cache.get(b"a") is None and cache.stats.entries == 0


def test_a_view_into_a_batch_is_stored_alone():
    batch = torch.zeros(8, 10, 4)
    cache = EncoderOutputCache(capacity_bytes=1 << 20)
    cache.put(b"a", batch[3])
    stored = cache.get(b"a")
    assert torch.equal(stored, batch[3])
    assert stored.untyped_storage().nbytes() == 160  # not the whole batch's storage


def test_equal_call_sequences_evict_equally():
    """What keeps tensor-parallel ranks in step: the same calls, the same contents."""
    import random

    rng = random.Random(0)
    calls = [(rng.choice("gp"), bytes([rng.randrange(12)]), rng.randrange(1, 9)) for _ in range(300)]
    caches = [EncoderOutputCache(capacity_bytes=500), EncoderOutputCache(capacity_bytes=500)]
    for cache in caches:
        for op, key, rows in calls:
            cache.get(key) if op == "g" else cache.put(key, tokens(rows))
    assert list(caches[0]._entries) == list(caches[1]._entries)
    assert caches[0].stats == caches[1].stats and caches[0].stats.evictions > 0


def test_published_counters_are_read_back_per_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSPA_STATS_DIR", str(tmp_path / "stats"))
    assert stats_file(0, 0) is not None
    for tp, hits in ((0, 3), (1, 5)):
        cache = EncoderOutputCache(capacity_bytes=1000, stats_file=stats_file(0, tp))
        cache.stats.hits = hits
        cache.put(b"a", tokens(2))
        cache.publish()
    stats = read_stats(tmp_path / "stats")
    assert sorted(stats) == [("0", "0"), ("0", "1")]
    assert stats["0", "1"].hits == 5 and stats["0", "0"].bytes == 32 and stats["0", "0"].capacity_bytes == 1000
    (tmp_path / "stats" / "encoder-cache-dp0-tp2.json").write_text("{not json")  # being written
    assert len(read_stats(tmp_path / "stats")) == 2
    assert json.loads((tmp_path / "stats" / "encoder-cache-dp0-tp0.json").read_text())["hits"] == 3


def test_no_stats_directory_no_file(monkeypatch):
    monkeypatch.delenv("ZSPA_STATS_DIR", raising=False)
    assert stats_file(0, 0) is None
    EncoderOutputCache(capacity_bytes=10).publish()  # a no-op


def test_a_servers_counter_folder_is_on_a_memory_file_system_where_there_is_one(tmp_path, monkeypatch):
    """Workers replace these files on each pruned step's critical path: /dev/shm when
    writable, else the temporary folder."""
    import os
    import shutil
    import tempfile

    from zspa_vllm.core import stats_files

    made = [stats_files.new_directory()]
    if os.access("/dev/shm", os.W_OK | os.X_OK):
        assert made[0].startswith("/dev/shm/zspa-stats-")
    monkeypatch.setattr(stats_files, "MEMORY_FS", str(tmp_path / "no-such-fs"))
    made.append(stats_files.new_directory())
    assert made[1].startswith(os.path.join(tempfile.gettempdir(), "zspa-stats-"))
    assert made[0] != made[1] and all(os.path.isdir(d) for d in made)
    for directory in made:
        shutil.rmtree(directory)
