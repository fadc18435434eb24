"""query_scope "first" (zspa_vllm/frontend/first_queries.py): an item keeps the query of
the first request that pruned it with the same knobs; bounded, least recently used first
out. Fast: no engine (the engine and server tests check the prefix-cache hit)."""

from __future__ import annotations

import pytest

from zspa_vllm import envs
from zspa_vllm.core.params import PruneParams
from zspa_vllm.frontend import first_queries

FIRST = PruneParams(0.25, query_scope="first")


@pytest.fixture(autouse=True)
def empty(monkeypatch):
    monkeypatch.delenv(envs.FIRST_QUERY_ITEMS, raising=False)
    first_queries.forget()
    yield
    first_queries.forget()


def resolve(params, hashes, queries):
    return first_queries.resolve(params, {"image": hashes}, {"image": queries})["image"]


def test_an_image_keeps_its_first_query():
    assert resolve(FIRST, ["a"], [[1, 2]]) == [[1, 2]]
    assert resolve(FIRST, ["a"], [[3]]) == [[1, 2]]  # asked again, other words
    # a two-image request: the known image keeps its query, the new one takes its own
    assert resolve(FIRST, ["b", "a"], [[4], [5]]) == [[4], [1, 2]]
    assert resolve(FIRST, ["b"], [[6]]) == [[4]]


def test_other_knobs_or_modality_select_afresh():
    resolve(FIRST, ["a"], [[1]])
    assert resolve(PruneParams(0.5, query_scope="first"), ["a"], [[2]]) == [[2]]
    assert resolve(PruneParams(0.25, core_ratio=0.5, query_scope="first"), ["a"], [[3]]) == [[3]]
    video = first_queries.resolve(FIRST, {"video": ["a"]}, {"video": [[4]]})
    assert video == {"video": [[4]]}
    assert resolve(FIRST, ["a"], [[9]]) == [[1]]  # none of them overwrote the first
    # a prompt with no item of a modality the family prunes
    assert first_queries.resolve(FIRST, {"image": ["a"]}, {"image": [[7]], "video": []}) == {"image": [[1]], "video": []}


def test_other_scopes_neither_read_nor_fill_it():
    resolve(FIRST, ["a"], [[1]])
    for scope in ("image_turn", "last_turn"):
        assert resolve(PruneParams(0.25, query_scope=scope), ["a"], [[2]]) == [[2]]
        assert resolve(PruneParams(0.25, query_scope=scope), ["new"], [[3]]) == [[3]]
    assert first_queries.size() == 1
    assert resolve(FIRST, ["new"], [[4]]) == [[4]]


def test_bounded_least_recently_used_first(monkeypatch):
    monkeypatch.setenv(envs.FIRST_QUERY_ITEMS, "2")
    resolve(FIRST, ["a"], [[1]])
    resolve(FIRST, ["b"], [[2]])
    resolve(FIRST, ["a"], [[9]])  # a used again: b is now the oldest
    resolve(FIRST, ["c"], [[3]])
    assert first_queries.size() == 2
    assert resolve(FIRST, ["a"], [[8]]) == [[1]]
    assert resolve(FIRST, ["b"], [[7]]) == [[7]]  # forgotten: selected for this question


def test_capacity_zero_selects_like_image_turn(monkeypatch):
    monkeypatch.setenv(envs.FIRST_QUERY_ITEMS, "0")
    assert resolve(FIRST, ["a"], [[1]]) == [[1]]
    assert resolve(FIRST, ["a"], [[2]]) == [[2]]
    assert first_queries.size() == 0


@pytest.mark.parametrize("raw", ["-1", "many", "1.5"])
def test_bad_capacity_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv(envs.FIRST_QUERY_ITEMS, raw)
    with pytest.raises(ValueError, match=f"ZSPA_FIRST_QUERY_ITEMS must be a whole number >= 0, got '{raw}'"):
        resolve(FIRST, ["a"], [[1]])
