"""The worker's phase timer: what it adds, when it is off, and what it publishes."""

import time

import pytest
import torch

from zspa_vllm.worker.phase_timings import PhaseTimer, PhaseTimes, read_stats, stats_file


def test_timed_blocks_add_their_time_and_items():
    timer = PhaseTimer(enabled=True)
    with timer.timed("encoder", 2, torch.device("cpu")):
        time.sleep(0.05)
    with timer.timed("selection", 3, None):
        time.sleep(0.01)
    with timer.timed("selection", 1, None):
        pass
    assert timer.times.encoder_items == 2 and timer.times.selection_items == 4
    assert 0.05 <= timer.times.encoder_seconds < 1.0
    assert 0.01 <= timer.times.selection_seconds < timer.times.encoder_seconds


def test_a_failing_block_is_still_timed_and_the_error_goes_on():
    timer = PhaseTimer(enabled=True)
    with pytest.raises(RuntimeError, match="boom"), timer.timed("encoder", 1, None):
        raise RuntimeError("boom")
    assert timer.times.encoder_items == 1


def test_off_records_and_publishes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSPA_STATS_DIR", str(tmp_path))
    timer = PhaseTimer(enabled=False, stats_file=stats_file(0, 0))
    with timer.timed("encoder", 5, None):
        time.sleep(0.01)
    timer.publish()
    assert timer.times == PhaseTimes() and read_stats(tmp_path) == {}


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="phase must be one of .*got 'prefill'"):
        with PhaseTimer(enabled=True).timed("prefill", 1, None):
            pass


def test_published_timings_are_read_back_per_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSPA_STATS_DIR", str(tmp_path))
    for tp in (0, 1):
        timer = PhaseTimer(enabled=True, stats_file=stats_file(0, tp))
        timer.times.selection_items = 10 + tp
        timer.publish()
    stats = read_stats(tmp_path)
    assert sorted(stats) == [("0", "0"), ("0", "1")] and stats["0", "1"].selection_items == 11
