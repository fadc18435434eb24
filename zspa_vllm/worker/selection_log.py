"""Recent selections, kept in the worker process so tests and debugging can see exactly
which visual tokens the model kept (vLLM hides the embeddings themselves).

With ``ZSPA_SELECTION_LOG=DIR`` set, every process that selects (each tensor-parallel
rank, say) also appends its selections to ``DIR/selections-<pid>.jsonl``.
"""

from __future__ import annotations

import functools
import json
import os
from collections import deque
from dataclasses import dataclass

from zspa_vllm import envs
from zspa_vllm.core.prune_plan import QUESTION_FREE


class Selection:
    """One image's (or video's) selection. The kept indices and query ids stay tensors (on
    the model's device) until someone reads them, so recording never waits for the device."""

    def __init__(
        self, num_visual: int, kept, query_ids, method: str, num_core: int, modality: str = "image", order=None
    ) -> None:
        self.num_visual = num_visual  # tokens the vision encoder produced for the item
        self.method = method
        self.num_core = num_core
        self.modality = modality
        self._kept, self._query_ids = kept, query_ids
        self._order = order  # the kept indices in the order chosen (core first), if known

    @functools.cached_property
    def kept(self) -> tuple[int, ...]:  # indices kept, ascending
        return _ints(self._kept)

    @functools.cached_property
    def query_ids(self) -> tuple[int, ...]:
        return _ints(self._query_ids)

    @functools.cached_property
    def core(self) -> tuple[int, ...]:
        """The kept indices chosen for their relevance to the query (ascending); the rest
        of ``kept`` are diversity picks. Empty when the order was not recorded."""
        if self._order is None or not self.query_ids or self.method in QUESTION_FREE:
            return ()
        order = _ints(self._order)
        return tuple(sorted(order if self.method == "relevance" else order[: self.num_core]))

    def as_dict(self) -> dict:
        names = ("modality", "num_visual", "kept", "core", "query_ids", "method", "num_core")
        return {name: getattr(self, name) for name in names}

    def __eq__(self, other) -> bool:
        return isinstance(other, Selection) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return f"Selection({self.as_dict()})"


def _ints(values) -> tuple[int, ...]:
    return tuple(values.tolist() if hasattr(values, "tolist") else values)


@dataclass(frozen=True)
class EncoderCall:
    num_images: int  # items (images or videos) encoded together in one vision-encoder call
    num_visual_tokens: int  # their unpruned tokens: what the vision encoder processed
    batch_images: int  # items vLLM handed to this embed_multimodal call


RECENT: deque[Selection] = deque(maxlen=1024)
ENCODER_CALLS: deque[EncoderCall] = deque(maxlen=1024)


def record(selection: Selection) -> None:
    RECENT.append(selection)
    log_dir = envs.get(envs.SELECTION_LOG)
    if log_dir:  # reads the indices: waits for the device
        with open(os.path.join(log_dir, f"selections-{os.getpid()}.jsonl"), "a") as log:
            log.write(json.dumps(selection.as_dict()) + "\n")


def record_encoder_call(num_images: int, num_visual_tokens: int, batch_images: int) -> None:
    ENCODER_CALLS.append(EncoderCall(num_images, num_visual_tokens, batch_images))


def clear() -> None:
    RECENT.clear()
    ENCODER_CALLS.clear()
