"""The per-prompt plan the processor hands to vLLM's hash and to the model."""

import pytest

from zspa_vllm.core.params import PruneParams, parse_knobs
from zspa_vllm.core.prune_plan import PrunePlan

HASHES = {"image": ("img-a", "img-b"), "video": ("vid-a",)}


def plan(queries=((5, 9), (7,)), **knobs) -> PrunePlan:
    return PrunePlan(parse_knobs({"keep_rate": 0.25, **knobs}), HASHES, {"image": queries})


def test_round_trip():
    original = PrunePlan(PruneParams(0.25, 0.4, "zspa", "last_turn"), HASHES, {"image": ((5, 9, 11), ()), "video": ((3,),)})
    assert PrunePlan.decode(original.encode()) == original


def test_equal_plans_encode_alike():
    assert len({plan(keep_rate=v).encode() for v in (0.25, "0.25", 0.250)}) == 1


def test_each_image_has_its_own_selection_key():
    p = plan()
    assert p.selection_key("image", 0) != p.selection_key("image", 1)  # other query
    assert plan(queries=((5, 9), (5, 9))).selection_key("image", 1) == p.selection_key("image", 0)
    # every knob that changes a zspa selection changes the key
    keys = {plan(**k).selection_key("image", 0) for k in ({}, {"keep_rate": 0.5}, {"core_ratio": 0.5})}
    assert len(keys) == 3


def test_selection_key_leaves_out_what_the_method_ignores():
    # divprune ignores the question and core_ratio; relevance ignores core_ratio
    for method in ("divprune", "random"):
        free = plan(prune_method=method)
        assert free.selection_key("image", 0) == free.selection_key("image", 1) == plan(prune_method=method, core_ratio=0.9).selection_key("image", 0)
    assert plan(prune_method="random").selection_key("image", 0) != plan(prune_method="divprune").selection_key("image", 0)
    rel = plan(prune_method="relevance")
    assert rel.selection_key("image", 0) == plan(prune_method="relevance", core_ratio=0.9).selection_key("image", 0)
    assert rel.selection_key("image", 0) != rel.selection_key("image", 1)
    # the query scope only picks the query: the same query is the same selection
    assert plan(query_scope="last_turn").selection_key("image", 0) == plan().selection_key("image", 0)


def test_content_key_names_the_image_not_the_question():
    p, q = plan(), plan(queries=((1,), (2,)), keep_rate=0.5)
    assert p.content_key("image", 0) == q.content_key("image", 0) and len(p.content_key("image", 0)) == 32
    assert p.content_key("image", 0) != p.content_key("image", 1)


def test_only_keeps_the_flagged_items_in_order():
    p = plan(queries=((1,), (2,)))
    sub = p.only({"image": [False, True], "video": [False]})
    assert sub.stock_hashes == {"image": ("img-b",), "video": ()}
    assert sub.queries == {"image": ((2,),)}
    assert sub.params == p.params


def test_queries_must_match_images():
    with pytest.raises(ValueError, match="a plan for 2 image items got 1 queries"):
        PrunePlan(PruneParams(0.5), HASHES, {"image": ((1,),)})
    with pytest.raises(ValueError, match="a plan for 1 video items got 2 queries"):
        PrunePlan(PruneParams(0.5), HASHES, {"image": ((1,), ()), "video": ((1,), (2,))})


@pytest.mark.parametrize(
    "method, n, rate, core, expected",
    [
        ("zspa", 576, 0.1, 0.2, (58, 12)),  # floor(0.2 * 58 + 0.5) = 12
        ("zspa", 576, 0.25, 0.5, (144, 72)),
        ("zspa", 576, 0.1, 0.0, (58, 0)),
        ("relevance", 576, 0.1, 0.2, (58, 58)),
        ("divprune", 576, 0.1, 0.9, (58, 0)),
        ("random", 576, 0.1, 0.9, (58, 0)),
        ("zspa", 1, 0.1, 0.5, (1, 1)),
    ],
)
def test_budget(method, n, rate, core, expected):
    assert PrunePlan(PruneParams(rate, core, method), {}, {}).budget(n) == expected


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
    from zspa_vllm.worker.model import encoder_groups

    assert encoder_groups(sizes, budget) == groups


def test_a_video_has_its_own_identity_and_query():
    p = PrunePlan(parse_knobs({"keep_rate": 0.25}), HASHES, {"image": ((5,), (5,)), "video": ((5,),)})
    assert p.modalities == ("image", "video")
    assert p.content_key("video", 0) not in (p.content_key("image", 0), p.content_key("image", 1))
    other = PrunePlan(p.params, HASHES, {"image": ((5,), (5,)), "video": ((6,),)})
    assert other.selection_key("video", 0) != p.selection_key("video", 0)
    assert other.selection_key("image", 0) == p.selection_key("image", 0)
    # a plan that prunes images only lists no video queries
    assert PrunePlan(p.params, HASHES, {"image": ((5,), (5,))}).modalities == ("image",)


def test_every_hook_of_a_request_shares_one_decode(monkeypatch):
    """zspa_vllm.core.fields: the hooks of one request read one text; it is decoded once,
    and what they hand on never holds our kwarg."""
    from zspa_vllm.core import fields

    fields._decoded.cache_clear()
    decodes = []
    original = PrunePlan.decode.__func__
    monkeypatch.setattr(PrunePlan, "decode", classmethod(lambda cls, text: decodes.append(text) or original(cls, text)))
    encoded = plan(keep_rate=0.125).encode()
    kwargs = {fields.ZSPA_KWARG: encoded, "max_pixels": 1024}
    for _ in range(4):  # apply, _get_mm_hashes, _apply_hf_processor_main, the placeholder count
        found, rest = fields.split_plan(kwargs)
        assert found == plan(keep_rate=0.125) and rest == {"max_pixels": 1024}
    assert decodes == [encoded]
    assert fields.split_plan({"max_pixels": 1}) == (None, {"max_pixels": 1})
    other = plan(keep_rate=0.5).encode()
    assert fields.read_plan({fields.ZSPA_KWARG: other}) == plan(keep_rate=0.5) and decodes == [encoded, other]
