"""Counters the worker processes publish for the HTTP layer's ``/metrics``.

Each worker (one per data-parallel x tensor-parallel rank) writes each kind of counters
as a small JSON file in ``ZSPA_STATS_DIR`` (set by ``zspa_vllm.register``), replaced
atomically; the API server reads them at every scrape. Files, not RPCs: vLLM 0.32 has
no channel from the workers to the API server for a plugin's numbers.

A worker publishes on its step's critical path (each pruned call), so the folder is on a
memory file system where there is one: replacing a file on a busy ext4 disk took 3 ms
per pruned request in benchmarks/plugin_cost.py, on /dev/shm about 0.03 ms.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from zspa_vllm import envs

MEMORY_FS = "/dev/shm"


def new_directory() -> str:
    """A fresh folder for one server's counters, removed when this process exits; on
    ``MEMORY_FS`` when it is writable, else in the temporary folder."""
    memory = MEMORY_FS if os.access(MEMORY_FS, os.W_OK | os.X_OK) else None
    directory = tempfile.mkdtemp(prefix="zspa-stats-", dir=memory)
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def stats_file(kind: str, data_parallel_rank: int, tensor_parallel_rank: int) -> Path | None:
    """Where this worker publishes its ``kind`` counters (None when no stats directory is set)."""
    directory = envs.get(envs.STATS_DIR)
    if not directory:
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    return Path(directory) / f"{kind}-dp{data_parallel_rank}-tp{tensor_parallel_rank}.json"


def publish(path: Path | None, stats) -> None:
    """Write the dataclass ``stats`` to ``path`` atomically (nothing when ``path`` is None)."""
    if path is None:
        return
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(asdict(stats)))
    os.replace(temporary, path)


def read_stats(directory: str | os.PathLike, kind: str, cls) -> dict[tuple[str, str], object]:
    """Every worker's published ``kind`` counters as ``cls``, by (dp rank, tp rank)."""
    found = {}
    for path in sorted(Path(directory).glob(f"{kind}-dp*-tp*.json")):
        dp, tp = path.stem.removeprefix(f"{kind}-").split("-")
        try:
            found[dp.removeprefix("dp"), tp.removeprefix("tp")] = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # being replaced right now: the next scrape reads it
    return found
