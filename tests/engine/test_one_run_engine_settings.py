"""The one-run families' checks that need an engine of their own settings (the shared
battery is test_one_run_families.py): server-wide knob defaults, and many images in
flight against the scheduler's encoder budget."""

from __future__ import annotations

import pytest

from tests.engine import harness
from tests.engine.harness import fixture_path, model_class_of, sampling, visual_tokens
from tests.engine.stock_reference import request_messages
from zspa_vllm.core.selection import num_kept
from zspa_vllm.worker import selection_log

pytestmark = pytest.mark.engine

QUESTION = "What color is the big circle?"


def image_token_id(family: str) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fixture_path(family)).convert_tokens_to_ids(harness.FAMILIES[family].image_token)


def test_engine_wide_defaults_and_request_overrides(zspa_engines):
    """vLLM's --mm-processor-kwargs / LLM(mm_processor_kwargs=) set the knobs' defaults;
    a request's own knobs override them (LLaVA-1.5: 576 tokens per image)."""
    with harness.runner("V1"):
        llm, _ = zspa_engines("llava-1.5", mm_processor_kwargs={"keep_rate": 0.25, "core_ratio": 0.4})
        assert model_class_of(llm).__name__ == "ZspaLlavaForConditionalGeneration"
        image = (336, 336, harness.fresh_seed())
        default = harness.ask(llm, [image], QUESTION)
        assert selection_log.RECENT[-1].num_core == 58  # floor(0.4 * 144 + 0.5)
        override = harness.ask(llm, [image], QUESTION, keep_rate=0.5)
        full = harness.ask(llm, [image], QUESTION, keep_rate=1)
    n_full = len(full.prompt_token_ids)
    assert n_full - len(default.prompt_token_ids) == 576 - 144
    assert n_full - len(override.prompt_token_ids) == 576 - 288


@pytest.mark.parametrize(
    "family, runner, budget, count",
    [
        ("llava-1.5", "V1", 2048, 16),  # 576 tokens an image: 3 unpruned images a step
        ("llava-next", None, 3000, 12),  # 1176 tokens a 336x336 image: 2 a step
    ],
)
def test_many_images_in_flight_do_not_over_pack_the_encoder(zspa_engines, family, runner, budget, count):
    n = visual_tokens(family, 336, 336)
    token = image_token_id(family)
    with harness.runner(runner):
        llm, _ = zspa_engines(family, max_num_batched_tokens=budget, max_num_seqs=32)

        def run():
            requests = [{"images": [(336, 336, harness.fresh_seed())], "question": QUESTION} for _ in range(count)]
            outs = llm.chat([request_messages(r) for r in requests], sampling(1), mm_processor_kwargs={"keep_rate": 0.1}, use_tqdm=False)
            assert [o.prompt_token_ids.count(token) for o in outs] == [num_kept(n, 0.1)] * count

        harness.check_encoder_steps_fit_the_budget(family, llm, run, count, n)
