"""The knobs: parsing, validation messages, canonical cache keys."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zspa_vllm.core.params import (
    KNOB_NAMES,
    PruneParams,
    parse_knobs,
    split_knobs,
)


def test_defaults_do_not_prune():
    params = parse_knobs({})
    assert params == PruneParams(keep_rate=1.0, core_ratio=0.2, prune_method="zspa", query_scope="image_turn")
    assert not params.prunes


def test_query_scope_parses_and_overrides_defaults():
    assert parse_knobs({"query_scope": " Last_Turn "}).query_scope == "last_turn"
    defaults = PruneParams(0.5, query_scope="last_turn")
    assert parse_knobs({"keep_rate": 0.25}, defaults).query_scope == "last_turn"
    assert parse_knobs({"query_scope": "image_turn"}, defaults).query_scope == "image_turn"
    assert parse_knobs({"query_scope": "FIRST"}, defaults).query_scope == "first"


@pytest.mark.parametrize("spelling", [0.25, "0.25", 0.250, " 0.25 ", "2.5e-1", 0.2500000000001])
def test_equal_values_parse_and_key_alike(spelling):
    params = parse_knobs({"keep_rate": spelling, "core_ratio": "0.4"})
    assert params.keep_rate == 0.25 and params.core_ratio == 0.4
    assert params.canonical() == parse_knobs({"keep_rate": 0.25, "core_ratio": 0.4}).canonical()


def test_keys_differ_where_the_selection_differs():
    keys = {
        parse_knobs(v).canonical()
        for v in (
            {"keep_rate": 0.25},
            {"keep_rate": 0.5},
            {"keep_rate": 0.25, "core_ratio": 0.4},
            {"keep_rate": 0.25, "prune_method": "divprune"},
        )
    }
    assert len(keys) == 4


def test_settings_that_keep_everything_share_one_key():
    keep_all = [{"keep_rate": 1}, {"keep_rate": 0.1, "prune_method": "none"}, {"core_ratio": 0.9}]
    assert {parse_knobs(v).canonical() for v in keep_all} == {"keep-all"}
    assert not any(parse_knobs(v).prunes for v in keep_all)


def test_values_override_defaults():
    defaults = PruneParams(keep_rate=0.5, core_ratio=0.1, prune_method="relevance")
    assert parse_knobs({}, defaults) == defaults
    assert parse_knobs({"keep_rate": None}, defaults) == defaults
    assert parse_knobs({"core_ratio": 0.3}, defaults) == PruneParams(0.5, 0.3, "relevance")
    assert parse_knobs({"prune_method": "ZSPA"}, defaults).prune_method == "zspa"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"keep_rate": 0}, "keep_rate must be in (0, 1], got 0"),
        ({"keep_rate": 1.5}, "keep_rate must be in (0, 1], got 1.5"),
        ({"keep_rate": -0.1}, "keep_rate must be in (0, 1], got -0.1"),
        ({"keep_rate": "abc"}, "keep_rate must be a number, got 'abc'"),
        ({"keep_rate": ""}, "keep_rate must be a number, got ''"),
        ({"keep_rate": True}, "keep_rate must be a number, got True"),
        ({"keep_rate": [0.5]}, "keep_rate must be a number, got [0.5]"),
        ({"keep_rate": float("nan")}, "keep_rate must be finite, got nan"),
        ({"keep_rate": "inf"}, "keep_rate must be finite, got 'inf'"),
        ({"core_ratio": -0.01}, "core_ratio must be in [0, 1], got -0.01"),
        ({"core_ratio": 2}, "core_ratio must be in [0, 1], got 2"),
        ({"core_ratio": {}}, "core_ratio must be a number, got {}"),
        ({"prune_method": "rand"}, "prune_method must be one of ['zspa', 'relevance', 'divprune', 'random', 'none'], got 'rand'"),
        ({"prune_method": 3}, "prune_method must be one of"),
        ({"query_scope": "all"}, "query_scope must be one of ['image_turn', 'last_turn', 'first'], got 'all'"),
        ({"query_scope": 1}, "query_scope must be one of ['image_turn', 'last_turn', 'first'], got 1"),
    ],
)
def test_bad_values_name_field_and_value(values, message):
    with pytest.raises(ValueError) as err:
        parse_knobs(values)
    assert message in str(err.value)


def test_split_knobs_removes_only_ours():
    ours, rest = split_knobs(
        {"keep_rate": 0.1, "core_ratio": 0.2, "prune_method": "zspa", "query_scope": "last_turn", "max_pixels": 1000}
    )
    assert set(ours) == set(KNOB_NAMES)
    assert rest == {"max_pixels": 1000}


@given(st.floats(1e-6, 1.0), st.floats(0.0, 1.0))
def test_parse_round_trips_through_strings(keep, core):
    direct = parse_knobs({"keep_rate": keep, "core_ratio": core})
    via_str = parse_knobs({"keep_rate": repr(keep), "core_ratio": str(core)})
    assert direct == via_str
    assert direct.canonical() == via_str.canonical()


def test_rates_that_round_to_zero_are_rejected():
    with pytest.raises(ValueError, match="keep_rate must be in"):
        parse_knobs({"keep_rate": 1e-12})
