"""The contract between the processor (API-server process), the scheduler (engine core)
and the model (workers): the one processor kwarg a plan travels in, the unpruned count a
pruned item's identity carries, and the per-item model fields the processor writes and
the model reads. Pure Python: no vLLM.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from zspa_vllm.core.prune_plan import PrunePlan

ZSPA_KWARG = "zspa"
# What the model gets for each pruned item, as field "zspa_<modality>_<name>"
FIELDS = (
    "query_ids",  # the item's query token ids (1-D, may be empty)
    "num_visual",  # tokens the vision encoder makes for it (n)
    "num_keep",  # tokens kept (l): its placeholder count
    "num_core",  # of which chosen by relevance
    "method",  # index into zspa_vllm.core.selection.METHODS
    "content_key",  # 32 bytes naming its unpruned encoder output (zspa_vllm.worker.encoder_cache)
    "frame_offsets",  # videos: (steps, 3) M-RoPE offset of each grid step from the video's base
)
MODALITIES = ("image", "video")  # what a family may prune


# A pruned item's identity (vLLM's mm hash of it) carries its unpruned token count, which
# the scheduler charges its encoder budget with (zspa_vllm.engine.encoder_budget).
UNPRUNED_TAG = "~zspa-n"
_TAGGED = re.compile(re.escape(UNPRUNED_TAG) + r"(\d+)$")


def tag(identity: str, num_unpruned: int) -> str:
    """``identity`` (a pruned item's hash) carrying its unpruned token count."""
    return f"{identity}{UNPRUNED_TAG}{num_unpruned}"


def unpruned_count(identifier: str) -> int | None:
    """The unpruned token count a tagged identity carries, or None (not tagged)."""
    match = _TAGGED.search(identifier)
    return int(match.group(1)) if match else None


def field_names(modality: str) -> dict[str, str]:
    """The model field of each of ``FIELDS`` for items of ``modality``."""
    return {field: f"zspa_{modality}_{field}" for field in FIELDS}


def read_plan(mm_kwargs: Mapping[str, Any]) -> PrunePlan | None:
    """The plan ``mm_kwargs`` carry, or None."""
    encoded = mm_kwargs.get(ZSPA_KWARG)
    return None if encoded is None else _decoded(encoded)


def split_plan(mm_kwargs: Mapping[str, Any]) -> tuple[PrunePlan | None, dict[str, Any]]:
    """The plan ``mm_kwargs`` carry (or None) and the other kwargs: what a vLLM hook hands
    on never holds our kwarg."""
    return read_plan(mm_kwargs), without_plan(mm_kwargs)


def without_plan(mm_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mm_kwargs.items() if k != ZSPA_KWARG}


@functools.lru_cache(maxsize=256)
def _decoded(encoded: str) -> PrunePlan:
    # every hook of one request reads the same text: decoded once (plans are immutable)
    return PrunePlan.decode(encoded)
