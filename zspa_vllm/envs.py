"""Every ``ZSPA_*`` environment variable the installed packages read, declared once.

Each is read lazily, when its value is needed (a variable set before an engine starts
reaches its worker processes, which inherit it), and a bad value raises ValueError naming
the variable and the value. ``zspa-serve`` and the engine's config check call ``check()``,
so a typo fails at start-up rather than at the first image. ``docs/operations.md`` holds
``markdown_table()`` (a test keeps them the same).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str  # as the docs show it
    default: str  # as the docs show it
    what: str
    parse: Callable[[str, str], Any]  # (name, raw value) -> value
    unset: Any = None  # the value when unset or empty


def _flag(name: str, raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {raw!r}")
    return raw == "1"


def _mib(name: str, raw: str) -> int:
    return _count(name, raw, " of MiB")


def _positive_bytes(name: str, raw: str) -> int:
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(f"{name} must be a whole number of bytes > 0, got {raw!r}")
    return size


def _count(name: str, raw: str, unit: str = "") -> int:
    try:
        count = int(raw)
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"{name} must be a whole number{unit} >= 0, got {raw!r}")
    return count


def _path(name: str, raw: str) -> str:
    return raw


ENCODER_CACHE_MIB = "ZSPA_ENCODER_CACHE_MIB"
PHASE_TIMINGS = "ZSPA_PHASE_TIMINGS"
SELECTION_LOG = "ZSPA_SELECTION_LOG"
STATS_DIR = "ZSPA_STATS_DIR"
MAX_BODY_BYTES = "ZSPA_MAX_BODY_BYTES"
ALLOW_PRIVATE_MEDIA_URLS = "ZSPA_ALLOW_PRIVATE_MEDIA_URLS"
KNOBS_ONLY_MM_KWARGS = "ZSPA_KNOBS_ONLY_MM_KWARGS"
FIRST_QUERY_ITEMS = "ZSPA_FIRST_QUERY_ITEMS"

DEFAULT_ENCODER_CACHE_MIB = 512
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_FIRST_QUERY_ITEMS = 20_000

VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        # 512 MiB holds ~70 Qwen2.5-VL-7B images of 1024 tokens or ~110 LLaVA-1.5-7B images
        # (bf16) and fits in the ~10% of device memory vLLM's default
        # --gpu-memory-utilization 0.9 leaves outside its own pools.
        Variable(ENCODER_CACHE_MIB, "MiB", str(DEFAULT_ENCODER_CACHE_MIB),
                 "each worker's cache of unpruned projected image tokens (`--encoder-cache-mib`); 0 switches it off",
                 _mib, DEFAULT_ENCODER_CACHE_MIB),
        # off by default: on an accelerator each timed call waits for the device before and after
        Variable(PHASE_TIMINGS, "0 or 1", "0",
                 "time the vision encoder and the selection in each worker, in /metrics (`--phase-timings`)",
                 _flag, False),
        Variable(SELECTION_LOG, "folder", "unset (off)",
                 "each selecting process appends every selection to a file there (zspa-show, tests, debugging)",
                 _path),
        Variable(STATS_DIR, "folder", "a fresh folder per server (on /dev/shm where writable)",
                 "where the workers publish their counters for /metrics; set by the first process, inherited",
                 _path),
        Variable(MAX_BODY_BYTES, "bytes", str(DEFAULT_MAX_BODY_BYTES),
                 "the largest request body zspa-serve reads (larger: 413)",
                 _positive_bytes, DEFAULT_MAX_BODY_BYTES),
        Variable(ALLOW_PRIVATE_MEDIA_URLS, "0 or 1", "0",
                 "fetch media URLs on private, loopback and link-local addresses (`--allow-private-media-urls`)",
                 _flag, False),
        Variable(KNOBS_ONLY_MM_KWARGS, "0 or 1", "0",
                 "set by zspa-serve without --trust-request-mm-kwargs: a request's mm_processor_kwargs may hold the knobs only",
                 _flag, False),
        # an entry is an item's hash, its knobs and its query ids: about 0.5 KB
        Variable(FIRST_QUERY_ITEMS, "items", str(DEFAULT_FIRST_QUERY_ITEMS),
                 "images (videos) per API-server process whose first query `query_scope: \"first\"` remembers, "
                 "least recently used forgotten first; 0: none (first then selects like image_turn)",
                 _count, DEFAULT_FIRST_QUERY_ITEMS),
    )
}


def get(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of variable ``name`` now (its default when unset or empty)."""
    variable = VARIABLES[name]
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    return variable.unset if not raw else variable.parse(name, raw)


def check(environ: Mapping[str, str] | None = None) -> None:
    """Raise ValueError for the first set variable with a bad value."""
    for name in VARIABLES:
        get(name, environ)


def encoder_cache_bytes(environ: Mapping[str, str] | None = None) -> int:
    return get(ENCODER_CACHE_MIB, environ) << 20


def markdown_table() -> str:
    rows = ["| Variable | Value | Default | What it does |", "|---|---|---|---|"]
    rows += [f"| `{v.name}` | {v.kind} | {v.default} | {v.what} |" for v in VARIABLES.values()]
    return "\n".join(rows) + "\n"
