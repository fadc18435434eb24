"""The unpruned count in an item's identity, and the scheduler the config hook installs.
(The charging itself runs on the real engine: tests/engine, ``*_do_not_over_pack_*``.)"""

import logging
from types import SimpleNamespace

import pytest

from zspa_vllm.core import fields
from zspa_vllm.engine import encoder_budget


@pytest.mark.parametrize("identity", ["0f3a9c", "lora-7:0f3a9c", "", "abc~zspa-n"])
def test_the_tag_round_trips_through_any_identity(identity):
    assert fields.unpruned_count(fields.tag(identity, 1176)) == 1176
    # vLLM prefixes a LoRA name to the hash it is given: the count is still read
    assert fields.unpruned_count("lora:" + fields.tag(identity, 5)) == 5


@pytest.mark.parametrize("identity", ["0f3a9c", "12345", "x~zspa-n12a", "x~zspa-n"])
def test_an_untagged_identity_carries_no_count(identity):
    assert fields.unpruned_count(identity) is None


def _feature(identifier: str, embeds: int):
    from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange

    return MultiModalFeatureSpec(
        data=None, modality="image", identifier=identifier, mm_position=PlaceholderRange(offset=3, length=embeds)
    )


def test_an_item_costs_its_unpruned_tokens():
    assert encoder_budget.encoder_cost(_feature(fields.tag("h", 576), 58)) == 576
    assert encoder_budget.encoder_cost(_feature("h", 58)) == 58  # stock: its embeds


@pytest.mark.parametrize(
    "cost, pruned, charged, budget_left, admitted",
    [
        (5000, True, 0, 2048, True),  # a step's first item always goes
        (576, True, 576, 1472, True),  # 2 x 576 within the token budget of 1200
        (576, True, 1152, 896, False),  # a third would pass 1200 tokens
        (576, False, 1152, 896, True),  # an unpruned item: vLLM's rule only
        (576, False, 1600, 448, False),
        (100, True, 1000, 1048, True),
    ],
)
def test_a_pruned_item_also_keeps_within_the_token_budget(cost, pruned, charged, budget_left, admitted):
    assert encoder_budget.admits(cost, pruned, charged, budget_left, token_budget=1200) is admitted


def _vllm_config(scheduler_cls=None):
    from vllm.config import SchedulerConfig

    config = SchedulerConfig(max_model_len=64, is_encoder_decoder=False, scheduler_cls=scheduler_cls)
    return SimpleNamespace(scheduler_config=config)


def test_install_names_the_factory_and_keeps_a_users_scheduler(caplog):
    config = _vllm_config()
    encoder_budget.install(config)
    encoder_budget.install(config)  # re-entrant
    assert config.scheduler_config.get_scheduler_cls() is encoder_budget.scheduler
    mine = _vllm_config("my_pkg.MyScheduler")
    with caplog.at_level(logging.WARNING, logger=encoder_budget.__name__):
        encoder_budget.install(mine)
    assert mine.scheduler_config.scheduler_cls == "my_pkg.MyScheduler"
    assert "my_pkg.MyScheduler" in caplog.text and "1/keep_rate" in caplog.text


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_the_scheduler_is_vllms_own_for_the_setting_charging_unpruned(async_scheduling):
    from vllm.config import SchedulerConfig

    stock = SchedulerConfig(max_model_len=64, is_encoder_decoder=False, async_scheduling=async_scheduling)
    cls = encoder_budget.scheduler_class(async_scheduling)
    assert cls.__mro__[1:3] == (encoder_budget.ChargeUnprunedMixin, stock.get_scheduler_cls())
    assert encoder_budget.scheduler_class(async_scheduling) is cls  # one class per setting
