"""Recent selections, kept in the worker process so tests and debugging can see exactly
which visual tokens the model kept (vLLM hides the embeddings themselves)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Selection:
    num_visual: int  # tokens the vision encoder produced for the image
    kept: tuple[int, ...]  # indices kept, ascending
    query_ids: tuple[int, ...]
    method: str
    num_core: int


RECENT: deque[Selection] = deque(maxlen=1024)


def record(selection: Selection) -> None:
    RECENT.append(selection)


def clear() -> None:
    RECENT.clear()
