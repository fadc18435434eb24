"""The scheduler charges its vision-encoder budget with each item's UNPRUNED tokens.

vLLM's scheduler admits an item's encoder work into a step while its placeholder count
fits ``encoder_compute_budget`` (``Scheduler._try_schedule_encoder_inputs``). Pruning
shrinks the placeholder count but the vision encoder still sees every patch, so one step
would carry up to 1/keep_rate times the encoder work the budget was sized for, and every
request that is decoding waits for it (inter-token latency under load).

Without pruning, a step's encoder work is also bounded by its token budget: an image's
placeholder tokens are prefilled in the step that encodes it. The encoder budget is at
least the largest possible item (Qwen2.5-VL: 16384 tokens), far above a typical token
budget, so with short pruned runs the token budget no longer bounds anything. A pruned
item is therefore admitted while the step's unpruned encoder work stays within both
budgets (the step's first item always goes, as an unpruned one would).

The unpruned count has to reach the engine-core process with the request, whatever the
processor cache does to the item's data (with ``mm_processor_cache_type=shm`` the engine
core sees only a shared-memory address), so it travels in the item's identity: a pruned
item's hash ends in ``UNPRUNED_TAG`` + its unpruned token count (``tag``). Items without
the tag (unpruned, stock) are charged as vLLM charges them.

An item left for a later step is cut as each release's own over-budget branch cuts it
(``tokens_before_item``). vLLM 0.34 requeues a prompt that must be prefilled whole
(chunked prefill off) when its encoder inputs would cut it; a request that opens a step
is therefore never cut there (``must_stay_whole``), or it would be requeued at every step.
"""

from __future__ import annotations

import logging

from zspa_vllm import vllm_versions
from zspa_vllm.core.fields import unpruned_count

logger = logging.getLogger(__name__)

# what EngineCore resolves SchedulerConfig.scheduler_cls to (a factory, see scheduler())
SCHEDULER_QUALNAME = f"{__name__}.scheduler"


def encoder_cost(feature) -> int:
    """What an item's encoder work costs a step: its unpruned tokens, else its embeds."""
    unpruned = unpruned_count(feature.identifier)
    return feature.mm_position.get_num_embeds() if unpruned is None else unpruned


def admits(cost: int, pruned: bool, charged: int, budget_left: int, token_budget: int) -> bool:
    """Whether a step that has charged ``charged`` for encoder work so far (``budget_left``
    of its encoder budget left) takes an item costing ``cost``: an unpruned item as vLLM
    does, a pruned one also within the token budget; the step's first item always."""
    if charged == 0:
        return True
    if cost > budget_left:
        return False
    return not pruned or charged + cost <= token_budget


def tokens_before_item(start_pos: int, num_computed_tokens: int, shift: int, num_new_tokens: int, version=None) -> int:
    """The step's tokens a request keeps when the item at ``start_pos`` is not encoded this
    step: vLLM's own over-budget branch of ``_try_schedule_encoder_inputs``, per release."""
    if vllm_versions.since(vllm_versions.ROLLBACK_KEEPS_DRAFTER_SHIFT, version):  # 0.32
        done = num_computed_tokens + shift
        return min(num_new_tokens, start_pos - done) if done < start_pos else 0
    return min(num_new_tokens, start_pos - num_computed_tokens) if num_computed_tokens < start_pos else 0


def must_stay_whole(opens_step: bool, chunked_prefill: bool, version=None) -> bool:
    """Whether a request's encoder inputs must all go this step: a prompt that needs a
    whole prefill (chunked prefill off) and opens the step, on a vLLM that requeues a cut
    one (it would be cut again at every step, and never run)."""
    return opens_step and not chunked_prefill and vllm_versions.since(vllm_versions.REQUEUES_CUT_WHOLE_PROMPTS, version)


class ChargeUnprunedMixin:
    """Mix in before vLLM's ``Scheduler`` (or ``AsyncScheduler``)."""

    def _try_schedule_encoder_inputs(
        self, request, num_computed_tokens, num_new_tokens, encoder_compute_budget, shift_computed_tokens=0
    ):
        # vLLM's own pass (placeholder counts), then keep only the leading items that
        # ``admits``; the first it refuses is handled as vLLM handles an item over budget:
        # schedule only the tokens before it. (Nothing is allocated for the items dropped
        # here: the scheduler allocates after this returns. A preempted request's refund
        # in vLLM's schedule() uses placeholder counts, so it refunds less than we
        # charged: that step encodes less, never more.)
        scheduled, num_new_tokens, _, external, duplicates = super()._try_schedule_encoder_inputs(
            request, num_computed_tokens, num_new_tokens, encoder_compute_budget, shift_computed_tokens
        )
        whole = must_stay_whole(
            encoder_compute_budget == self.max_num_encoder_input_tokens, self.scheduler_config.enable_chunked_prefill
        )
        budget = encoder_compute_budget
        for position, i in enumerate(scheduled):
            feature = request.mm_features[i]
            cost = encoder_cost(feature)
            charged = self.max_num_encoder_input_tokens - budget
            pruned = unpruned_count(feature.identifier) is not None
            if not whole and not admits(cost, pruned, charged, budget, self.max_num_scheduled_tokens):
                num_new_tokens = tokens_before_item(
                    feature.mm_position.offset, num_computed_tokens, shift_computed_tokens, num_new_tokens
                )
                scheduled = scheduled[:position]
                external = [j for j in external if j < i]
                duplicates = [j for j in duplicates if j < i]
                break
            budget -= cost
        return scheduled, num_new_tokens, max(budget, 0), external, duplicates


_SCHEDULERS: dict[type, type] = {}


def scheduler_class(async_scheduling: bool) -> type:
    """vLLM's scheduler for that setting (as ``SchedulerConfig.get_scheduler_cls`` picks
    when no class is named), charging unpruned tokens."""
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    base = AsyncScheduler if async_scheduling else Scheduler
    if base not in _SCHEDULERS:
        _SCHEDULERS[base] = type(f"ZspaCharged{base.__name__}", (ChargeUnprunedMixin, base), {"__module__": __name__})
    return _SCHEDULERS[base]


def scheduler(*, vllm_config, **kwargs):
    """The scheduler EngineCore builds (``SchedulerConfig.scheduler_cls`` names this). A
    factory, because vLLM decides async scheduling after the model's config hook ran."""
    return scheduler_class(vllm_config.scheduler_config.async_scheduling)(vllm_config=vllm_config, **kwargs)


def install(vllm_config) -> None:
    """Make EngineCore build ``scheduler`` (called from the model's config hook)."""
    config = vllm_config.scheduler_config
    if config.scheduler_cls in (None, SCHEDULER_QUALNAME):
        config.scheduler_cls = SCHEDULER_QUALNAME
    else:  # someone else's scheduler: served as is, the model still bounds each encoder call
        logger.warning(
            "zspa-vllm: scheduler_cls=%s is kept; its encoder budget counts pruned placeholder "
            "tokens, so one step may encode up to 1/keep_rate times the images it was sized for",
            config.scheduler_cls,
        )
