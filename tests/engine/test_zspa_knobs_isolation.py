"""The knobs never reach the Hugging Face processor, for every family: neither the
request's mm_processor_kwargs nor the engine-wide defaults (vLLM merges both into what
it passes to the HF processor, so the plugin must take them out)."""

from __future__ import annotations

import pytest

from tests.engine.harness import FAMILIES, visual_tokens
from tests.engine.stock_reference import request_messages
from zspa_vllm.core.selection import num_kept

pytestmark = pytest.mark.engine

OURS = {"keep_rate", "core_ratio", "prune_method", "query_scope", "zspa"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_knobs_never_reach_the_hf_processor(family, zspa_engines, monkeypatch):
    from vllm.multimodal.processing.context import InputProcessingContext

    seen: list[set[str]] = []
    call, get = InputProcessingContext.call_hf_processor, InputProcessingContext.get_hf_processor

    def call_hf_processor(self, hf_processor, data, kwargs={}):
        seen.append(set(kwargs) | set(self.get_merged_mm_kwargs(kwargs)))
        return call(self, hf_processor, data, kwargs)

    def get_hf_processor(self, *args, **kwargs):
        seen.append(set(kwargs))
        return get(self, *args, **kwargs)

    monkeypatch.setattr(InputProcessingContext, "call_hf_processor", call_hf_processor)
    monkeypatch.setattr(InputProcessingContext, "get_hf_processor", get_hf_processor)

    llm, _ = zspa_engines(family, mm_processor_kwargs={"keep_rate": 0.5, "core_ratio": 0.3})
    seen.clear()  # start-up profiling ran too; only requests matter here
    n = visual_tokens(family, 336, 336)
    for knobs, rate in [(None, 0.5), ({"keep_rate": "0.25", "prune_method": "relevance"}, 0.25)]:
        spec = {"images": [(336, 336, 700 + len(seen))], "question": "What is this?"}
        from tests.engine.harness import sampling

        (out,) = llm.chat(request_messages(spec), sampling(1), mm_processor_kwargs=knobs, use_tqdm=False)
        assert list(out.prompt_token_ids).count(_image_token(llm)) == num_kept(n, rate)  # the knobs applied
    calls_with_images = len(seen)
    assert calls_with_images > 0  # the hook saw the HF processor being called
    assert all(not (names & OURS) for names in seen), seen


def _image_token(llm) -> int:
    config = llm.llm_engine.model_config.hf_config
    return getattr(config, "image_token_index", None) or config.image_token_id
