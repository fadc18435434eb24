"""The pruning knobs and settings: names, defaults, parsing, validation, canonical form.

Every knob a request or a server can set is declared here and nowhere else. Values arrive
through vLLM's ``mm_processor_kwargs`` (per request, or server-wide via
``--mm-processor-kwargs``); they are removed from those kwargs before the Hugging Face
processor sees them. Settings read from the environment are declared in
``zspa_vllm.envs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zspa_vllm.core.selection import METHODS as SELECTION_METHODS

KEEP_RATE = "keep_rate"
CORE_RATIO = "core_ratio"
PRUNE_METHOD = "prune_method"
QUERY_SCOPE = "query_scope"
KNOB_NAMES = (KEEP_RATE, CORE_RATIO, PRUNE_METHOD, QUERY_SCOPE)

# "none" keeps every token whatever keep_rate says.
PRUNE_METHODS = (*SELECTION_METHODS, "none")
# Which user text an image is ranked against (zspa_vllm/core/query.py): "image_turn", the
# turn holding the image, keeps each image's selection (and so vLLM's caches) stable
# across a conversation; "last_turn" re-selects every image for the newest question;
# "first", the text of the first request that pruned this image with these knobs, keeps
# it stable across separate requests too (zspa_vllm/frontend/first_queries.py).
QUERY_SCOPES = ("image_turn", "last_turn", "first")

DEFAULT_KEEP_RATE = 1.0  # nothing set: no pruning
DEFAULT_CORE_RATIO = 0.2  # the paper's guidance for scene / hallucination questions
DEFAULT_PRUNE_METHOD = "zspa"
DEFAULT_QUERY_SCOPE = "image_turn"

# Knob values are rounded to this many decimals, so 0.25, "0.25" and 0.250000000001
# are one setting (and one cache key).
_DECIMALS = 9


@dataclass(frozen=True)
class PruneParams:
    keep_rate: float = DEFAULT_KEEP_RATE
    core_ratio: float = DEFAULT_CORE_RATIO
    prune_method: str = DEFAULT_PRUNE_METHOD
    query_scope: str = DEFAULT_QUERY_SCOPE

    @property
    def prunes(self) -> bool:
        """False when every visual token is kept (the request is stock vLLM's)."""
        return self.prune_method != "none" and self.keep_rate < 1.0

    def canonical(self) -> str:
        """A stable string naming the selection this setting makes, for cache keys.
        Settings that keep every token are one key, whatever their other values. The
        query scope is not part of it: it only decides which query an image gets, and
        the query itself is part of every image's key."""
        if not self.prunes:
            return "keep-all"
        return f"{self.prune_method}:keep={self.keep_rate!r}:core={self.core_ratio!r}"


def parse_knobs(values: Mapping[str, Any], defaults: PruneParams | None = None) -> PruneParams:
    """Knobs from ``values`` (unknown keys ignored) over ``defaults``.

    Raises ValueError naming the field and the value when one is bad.
    """
    base = defaults or PruneParams()
    keep_rate, core_ratio, method = base.keep_rate, base.core_ratio, base.prune_method
    scope = base.query_scope
    if values.get(KEEP_RATE) is not None:
        keep_rate = _parse_ratio(KEEP_RATE, values[KEEP_RATE], low_open=True)
    if values.get(CORE_RATIO) is not None:
        core_ratio = _parse_ratio(CORE_RATIO, values[CORE_RATIO], low_open=False)
    if values.get(PRUNE_METHOD) is not None:
        method = values[PRUNE_METHOD]
        if not isinstance(method, str) or method.strip().lower() not in PRUNE_METHODS:
            raise ValueError(f"{PRUNE_METHOD} must be one of {list(PRUNE_METHODS)}, got {method!r}")
        method = method.strip().lower()
    if values.get(QUERY_SCOPE) is not None:
        scope = values[QUERY_SCOPE]
        if not isinstance(scope, str) or scope.strip().lower() not in QUERY_SCOPES:
            raise ValueError(f"{QUERY_SCOPE} must be one of {list(QUERY_SCOPES)}, got {scope!r}")
        scope = scope.strip().lower()
    return PruneParams(keep_rate, core_ratio, method, scope)


def split_knobs(mm_kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our knobs, everything else) from a ``mm_processor_kwargs`` mapping."""
    ours = {k: v for k, v in mm_kwargs.items() if k in KNOB_NAMES}
    rest = {k: v for k, v in mm_kwargs.items() if k not in KNOB_NAMES}
    return ours, rest


def _parse_ratio(name: str, value: Any, *, low_open: bool) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    number = round(number, _DECIMALS)
    in_range = (0.0 < number <= 1.0) if low_open else (0.0 <= number <= 1.0)
    if not in_range:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return number + 0.0  # -0.0 -> 0.0
