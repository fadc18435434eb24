"""Worker-side time spent in the vision encoder and in the selection, recorded where
each runs (``zspa_vllm.worker.model``), for benchmarks and for ``/metrics``.

On with ``ZSPA_PHASE_TIMINGS=1`` (``zspa_vllm.core.params``; ``zspa-serve --phase-timings``).
A timed call waits for the device before it starts and after it ends, so that the time
is the call's own and not the queue's; that is why it is off by default. The LLM's
prefill and decode times are vLLM's own (``vllm:request_prefill_time_seconds``, which
includes the encoder and the selection of the step that prefills, and
``vllm:request_decode_time_seconds``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from zspa_vllm.core import stats_files

STATS_KIND = "phase-timings"
PHASES = ("encoder", "selection")


@dataclass
class PhaseTimes:
    encoder_seconds: float = 0.0  # vision encoder + projector calls (unpruned items too)
    encoder_items: int = 0  # items (images, videos) those calls encoded
    selection_seconds: float = 0.0  # query embedding + select_tokens + gathering the kept rows
    selection_items: int = 0  # items selected on


class PhaseTimer:
    def __init__(self, enabled: bool, stats_file: Path | None = None) -> None:
        self.enabled = enabled
        self.times = PhaseTimes()
        self._stats_file = stats_file if enabled else None

    @contextmanager
    def timed(self, phase: str, items: int, device: torch.device | None):
        """Add the block's wall time and ``items`` to ``phase``'s counters (if enabled)."""
        if not self.enabled:
            yield
            return
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        _wait_for(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _wait_for(device)
            setattr(self.times, f"{phase}_seconds", getattr(self.times, f"{phase}_seconds") + time.perf_counter() - start)
            setattr(self.times, f"{phase}_items", getattr(self.times, f"{phase}_items") + items)

    def publish(self) -> None:
        stats_files.publish(self._stats_file, self.times)


def stats_file(data_parallel_rank: int, tensor_parallel_rank: int) -> Path | None:
    return stats_files.stats_file(STATS_KIND, data_parallel_rank, tensor_parallel_rank)


def read_stats(directory) -> dict[tuple[str, str], PhaseTimes]:
    """Every worker's published timings, by (data-parallel rank, tensor-parallel rank)."""
    return stats_files.read_stats(directory, STATS_KIND, PhaseTimes)


def _wait_for(device: torch.device | None) -> None:
    if device is not None and device.type != "cpu":
        torch.accelerator.synchronize(device)
