"""The per-request record the processor hands to the model (and to vLLM's hash)."""

import pytest

from zspa_vllm.params import PruneParams, parse_knobs
from zspa_vllm.processor import PruneRequest


def test_round_trip():
    request = PruneRequest(PruneParams(0.25, 0.4, "zspa"), (5, 9, 11))
    assert PruneRequest.decode(request.encode()) == request


def test_equal_requests_encode_alike_and_different_ones_do_not():
    same = {PruneRequest(parse_knobs({"keep_rate": v}), (1, 2)).encode() for v in (0.25, "0.25", 0.250)}
    assert len(same) == 1
    others = {
        PruneRequest(parse_knobs({"keep_rate": 0.25}), (1, 3)).encode(),
        PruneRequest(parse_knobs({"keep_rate": 0.5}), (1, 2)).encode(),
        PruneRequest(parse_knobs({"keep_rate": 0.25, "core_ratio": 0.5}), (1, 2)).encode(),
    }
    assert len(others | same) == 4


@pytest.mark.parametrize(
    "method, n, rate, core, expected",
    [
        ("zspa", 576, 0.1, 0.2, (58, 12)),  # floor(0.2 * 58 + 0.5) = 12
        ("zspa", 576, 0.25, 0.5, (144, 72)),
        ("zspa", 576, 0.1, 0.0, (58, 0)),
        ("relevance", 576, 0.1, 0.2, (58, 58)),
        ("divprune", 576, 0.1, 0.9, (58, 0)),
        ("zspa", 1, 0.1, 0.5, (1, 1)),
    ],
)
def test_budget(method, n, rate, core, expected):
    assert PruneRequest(PruneParams(rate, core, method), ()).budget(n) == expected


@pytest.mark.parametrize(
    "sizes, budget, groups",
    [
        ([576] * 5, 2048, [(0, 3), (3, 5)]),
        ([576] * 5, 576, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),
        ([3000, 100, 100], 2048, [(0, 1), (1, 3)]),  # too big for the budget: alone
        ([100], 10, [(0, 1)]),
    ],
)
def test_encoder_groups_fit_the_unpruned_budget(sizes, budget, groups):
    from zspa_vllm.model import encoder_groups

    assert encoder_groups(sizes, budget) == groups
