"""Per-HTTP-request accounting of visual tokens, from the processor to the HTTP layer.

The HTTP layer (``zspa_serve.middleware``) opens a tally under a fresh id and passes the id
in ``mm_processor_kwargs`` (``TALLY_KWARG``); the multimodal processor, which runs in the
same API-server process, records each image's unpruned and kept token counts under it
(and keeps the id out of the image hash); the HTTP layer closes the tally and reports it.
Ids nobody opened are ignored, so a client cannot grow this table.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

TALLY_KWARG = "zspa_tally"


@dataclass
class Tally:
    method: str = "none"  # the request's prune_method ("none" when nothing was pruned)
    visual_tokens: int = 0  # before pruning, summed over the request's images
    visual_tokens_kept: int = 0

    def as_dict(self) -> dict:
        return {"visual_tokens": self.visual_tokens, "visual_tokens_kept": self.visual_tokens_kept}


_open: dict[str, Tally] = {}
_lock = threading.Lock()


def open_tally() -> str:
    tally_id = uuid.uuid4().hex
    with _lock:
        _open[tally_id] = Tally()
    return tally_id


def record(tally_id: str, method: str, counts: list[tuple[int, int]]) -> None:
    """Add one processed prompt's images, as (unpruned, kept) token counts."""
    with _lock:
        tally = _open.get(tally_id)
        if tally is None:
            return
        tally.method = method
        tally.visual_tokens += sum(n for n, _ in counts)
        tally.visual_tokens_kept += sum(kept for _, kept in counts)


def peek(tally_id: str) -> Tally | None:
    with _lock:
        tally = _open.get(tally_id)
        return None if tally is None else Tally(tally.method, tally.visual_tokens, tally.visual_tokens_kept)


def close(tally_id: str) -> Tally | None:
    with _lock:
        return _open.pop(tally_id, None)
