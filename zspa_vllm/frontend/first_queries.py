"""``query_scope: "first"``: an image keeps the query it was first asked with.

The selection is a function of the image, the knobs and the query. Remembering, per
image and knobs, the query of the first request that pruned it makes every later request
about that image select the same tokens, get the same placeholders and the same item
hash, and so reuse the image's KV from vLLM's prefix cache the way stock vLLM does: later
questions prefill only their own text, at the pruned image's KV footprint.

The memory lives in the API-server process that runs the multimodal processor: keyed by
vLLM's own content hash of the item (pixels or frames, processor kwargs, model), its
modality and the knobs' canonical form; least recently used entries are forgotten past
``ZSPA_FIRST_QUERY_ITEMS``. Each API-server process (``--api-server-count``) and each
replica has its own: an image asked on another one is selected for the question it is
asked there first. A restart forgets every image.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from zspa_vllm import envs
from zspa_vllm.core.params import PruneParams

FIRST = "first"

_remembered: OrderedDict[tuple[str, str, str], tuple[int, ...]] = OrderedDict()
_lock = threading.Lock()  # vLLM may run processors in several threads


def resolve(
    params: PruneParams, hashes: Mapping[str, Sequence[str]], queries: Mapping[str, list[list[int]]]
) -> dict[str, list[list[int]]]:
    """Each item's query: the one remembered for its (hash, knobs) when the scope is
    ``first`` and there is one, else ``queries``' (then remembered)."""
    if params.query_scope != FIRST:
        return dict(queries)
    capacity = envs.get(envs.FIRST_QUERY_ITEMS)
    knobs = params.canonical()
    resolved = {}
    with _lock:
        for modality, items in queries.items():
            resolved[modality] = []
            for stock_hash, query in zip(hashes.get(modality, ()), items, strict=True):
                key = (modality, stock_hash, knobs)
                first = _remembered.get(key)
                if first is None:
                    first = tuple(query)
                    _remembered[key] = first
                _remembered.move_to_end(key)
                while len(_remembered) > capacity:
                    _remembered.popitem(last=False)
                resolved[modality].append(list(first))
    return resolved


def size() -> int:
    """Items remembered now (tests, diagnostics)."""
    return len(_remembered)


def forget() -> None:
    with _lock:
        _remembered.clear()
