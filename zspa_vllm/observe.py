"""Recent selections, kept in the worker process so tests and debugging can see exactly
which visual tokens the model kept (vLLM hides the embeddings themselves).

With ``ZSPA_SELECTION_LOG=DIR`` set, every process that selects (each tensor-parallel
rank, say) also appends its selections to ``DIR/selections-<pid>.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Selection:
    num_visual: int  # tokens the vision encoder produced for the image
    kept: tuple[int, ...]  # indices kept, ascending
    query_ids: tuple[int, ...]
    method: str
    num_core: int


@dataclass(frozen=True)
class EncoderCall:
    num_images: int  # encoded together in one vision-encoder call
    num_visual_tokens: int  # their unpruned tokens: what the vision encoder processed
    batch_images: int  # images vLLM handed to this embed_multimodal call


RECENT: deque[Selection] = deque(maxlen=1024)
ENCODER_CALLS: deque[EncoderCall] = deque(maxlen=1024)


def record(selection: Selection) -> None:
    RECENT.append(selection)
    log_dir = os.environ.get("ZSPA_SELECTION_LOG")
    if log_dir:
        with open(os.path.join(log_dir, f"selections-{os.getpid()}.jsonl"), "a") as log:
            log.write(json.dumps(dataclasses.asdict(selection)) + "\n")


def record_encoder_call(num_images: int, num_visual_tokens: int, batch_images: int) -> None:
    ENCODER_CALLS.append(EncoderCall(num_images, num_visual_tokens, batch_images))


def clear() -> None:
    RECENT.clear()
    ENCODER_CALLS.clear()
