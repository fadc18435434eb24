"""LLaVA-1.5 with the zspa plugin on the real vLLM CPU engine (tiny random-weight fixture)."""

from __future__ import annotations

import pytest
import torch

from tests.engine import harness
from tests.engine.harness import logprobs_max_diff, model_class_of, sampling, step_logprobs
from tests.engine.stock_reference import request_messages, stock_outputs
from zspa_vllm.worker import selection_log
from zspa_vllm.core.selection import num_kept, select_tokens

pytestmark = [pytest.mark.engine, pytest.mark.v1_runner]  # the V1 runner's LLaVA-1.5 battery (MRv2: test_one_run_families and the rest)

FAMILY = "llava-1.5"
N = 576  # CLIP 336/14, CLS dropped: every image
QUESTION = "What color is the big circle?"
OTHER_QUESTION = "How many small squares are in the lower right corner?"
SMALL, LARGE = (336, 336, 0), (1024, 768, 1)
_seeds = iter(range(100, 10_000))


def fresh(size) -> tuple[int, int, int]:
    """An image never sent before: identical requests are served from vLLM's caches
    without running the encoder (or our selection) again."""
    return (size[0], size[1], next(_seeds))


def ask(llm, images, question=QUESTION, max_tokens=3, **knobs):
    return harness.ask(llm, images, question, max_tokens, **knobs)


@pytest.fixture(scope="module")
def engine(zspa_engines):
    llm, _ = zspa_engines(FAMILY, enable_prefix_caching=True)
    assert model_class_of(llm).__name__ == "ZspaLlavaForConditionalGeneration"
    return llm


@pytest.fixture(scope="module")
def stock():
    requests = [
        {"images": [SMALL], "question": QUESTION},
        {"images": [LARGE], "question": OTHER_QUESTION},
        {"images": [SMALL, LARGE], "question": QUESTION},
    ]
    return requests, stock_outputs(FAMILY, requests)


def _same_as_stock(out, ref) -> float:
    assert list(out.prompt_token_ids) == ref["prompt_token_ids"]
    assert list(out.outputs[0].token_ids) == ref["token_ids"]
    ours = step_logprobs(out, 0)
    return max(abs(ours[int(t)] - lp) for t, lp in ref["logprobs"][0].items())


@pytest.mark.parametrize("knobs", [{}, {"keep_rate": 1.0, "core_ratio": 0.7}, {"keep_rate": 0.1, "prune_method": "none"}])
def test_keeping_every_token_is_stock_vllm(engine, stock, knobs):
    requests, refs = stock
    for request, ref in zip(requests, refs):
        out = ask(engine, request["images"], request["question"], **knobs)
        assert _same_as_stock(out, ref) < 1e-5
        assert not selection_log.RECENT  # selection bypassed entirely
    # sensitivity: a pruned request is not stock
    pruned = ask(engine, requests[0]["images"], requests[0]["question"], keep_rate=0.5)
    assert list(pruned.prompt_token_ids) != refs[0]["prompt_token_ids"]


@pytest.mark.parametrize("size", [SMALL, LARGE])
@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_prompt_shrinks_by_exactly_the_pruned_tokens(engine, size, rate):
    image = fresh(size)
    full = len(ask(engine, [image]).prompt_token_ids)
    pruned = ask(engine, [image], keep_rate=rate)
    assert full - len(pruned.prompt_token_ids) == N - num_kept(N, rate)
    (selection,) = selection_log.RECENT
    assert selection.num_visual == N and len(selection.kept) == num_kept(N, rate)


def test_two_images_each_get_their_own_budget(engine):
    images = [fresh(SMALL), fresh(LARGE)]
    full = ask(engine, images)
    pruned = ask(engine, images, keep_rate=0.25)
    assert len(full.prompt_token_ids) - len(pruned.prompt_token_ids) == 2 * (N - num_kept(N, 0.25))
    assert [len(s.kept) for s in selection_log.RECENT] == [144, 144]
    assert selection_log.RECENT[0].kept != selection_log.RECENT[1].kept  # selected per image


def _engine_selection(llm, image_spec, question):
    """select_tokens on the embeddings computed here from the model's own weights."""
    from transformers import AutoProcessor, AutoTokenizer

    from tests.engine.harness import fixture_path
    from tests.fixtures.images import make_image

    processor = AutoProcessor.from_pretrained(fixture_path(FAMILY))
    pixels = processor.image_processor(make_image(*image_spec), return_tensors="pt")["pixel_values"]
    ids = AutoTokenizer.from_pretrained(fixture_path(FAMILY)).encode(question, add_special_tokens=False)

    def embed(model):
        with torch.no_grad():
            feats = model.vision_tower(pixels.to(torch.float32), feature_select_strategy="default")
            visual = model.multi_modal_projector(feats)[0]
            query = model.get_language_model().embed_input_ids(torch.tensor(ids))
        return visual, query

    ((visual, query),) = llm.apply_model(embed)
    return visual, query, ids


@pytest.mark.parametrize("method, core_ratio", [("zspa", 0.2), ("zspa", 0.0), ("relevance", 0.2), ("divprune", 0.2)])
def test_engine_keeps_what_select_tokens_selects(engine, method, core_ratio):
    image = fresh(SMALL)
    visual, query, ids = _engine_selection(engine, image, QUESTION)
    ask(engine, [image], keep_rate=0.1, core_ratio=core_ratio, prune_method=method)
    (selection,) = selection_log.RECENT
    assert selection.query_ids == tuple(ids)  # the query is exactly the question's tokens
    expected = select_tokens(visual, query, num_kept(N, 0.1), core_ratio, method=method)
    assert list(selection.kept) == expected.tolist()


def test_image_only_prompt_selects_by_diversity(engine):
    image = fresh(SMALL)
    visual, _, _ = _engine_selection(engine, image, QUESTION)
    ask(engine, [image], question="", keep_rate=0.1)
    (selection,) = selection_log.RECENT
    assert selection.query_ids == ()
    assert list(selection.kept) == select_tokens(visual, None, 58, 0.2).tolist()


def test_different_questions_keep_different_tokens_and_caches_stay_exact(engine, zspa_engines):
    knobs = dict(keep_rate=0.1, core_ratio=0.5)
    order = [QUESTION, OTHER_QUESTION, QUESTION]
    image = fresh(SMALL)
    cached, kept_sets = [], []
    for question in order:
        cached.append(ask(engine, [image], question, **knobs))
        kept_sets.append(selection_log.RECENT[-1].kept if selection_log.RECENT else None)
    assert kept_sets[0] != kept_sets[1]
    # the third request re-uses the first's caches: it ran no selection at all
    assert kept_sets[2] is None
    assert logprobs_max_diff(cached[0], cached[2]) == 0.0

    uncached_llm, _ = zspa_engines(FAMILY, enable_prefix_caching=False)
    for question, with_cache in zip(reversed(order), reversed(cached)):
        uncached = ask(uncached_llm, [image], question, **knobs)
        assert list(uncached.outputs[0].token_ids) == list(with_cache.outputs[0].token_ids)
        assert logprobs_max_diff(uncached, with_cache) < 1e-5
    # sensitivity: the two questions' outputs differ, so a stale cache would show
    assert logprobs_max_diff(cached[0], cached[1]) > 1e-4


def test_bad_knobs_raise_value_error_naming_the_field(zspa_engines):
    llm, _ = zspa_engines(FAMILY)
    for knobs, message in [
        ({"keep_rate": 2}, "keep_rate must be in (0, 1], got 2"),
        ({"core_ratio": "lots"}, "core_ratio must be a number, got 'lots'"),
        ({"prune_method": "random"}, "prune_method must be one of"),
    ]:
        with pytest.raises(ValueError) as err:
            ask(llm, [SMALL], **knobs)
        assert message in str(err.value)
    assert len(ask(llm, [SMALL], keep_rate=0.5).prompt_token_ids) > 0  # still serving


def test_engine_wide_defaults_and_request_overrides(zspa_engines):
    llm, _ = zspa_engines(FAMILY, mm_processor_kwargs={"keep_rate": 0.25, "core_ratio": 0.4})
    image = fresh(SMALL)
    default = ask(llm, [image])
    assert selection_log.RECENT[-1].num_core == 58  # floor(0.4 * 144 + 0.5)
    override = ask(llm, [image], keep_rate=0.5)
    full = ask(llm, [image], keep_rate=1)
    n_full = len(full.prompt_token_ids)
    assert n_full - len(default.prompt_token_ids) == N - 144
    assert n_full - len(override.prompt_token_ids) == N - 288


def test_many_images_in_flight_do_not_over_pack_the_encoder(zspa_engines):
    budget = 2048  # max_num_batched_tokens = the scheduler's encoder budget: 3 full images
    llm, _ = zspa_engines(FAMILY, max_num_batched_tokens=budget, max_num_seqs=32)
    ask(llm, [fresh(SMALL)])
    expected_len = len(ask(llm, [fresh(SMALL)], keep_rate=0.1).prompt_token_ids)

    def run():
        conversations = [request_messages({"images": [fresh(SMALL)], "question": QUESTION}) for _ in range(16)]
        outs = llm.chat(conversations, sampling(2), mm_processor_kwargs={"keep_rate": 0.1}, use_tqdm=False)
        assert [len(o.prompt_token_ids) for o in outs] == [expected_len] * 16

    harness.check_encoder_steps_fit_the_budget(FAMILY, llm, run, 16, N)


def test_chunked_prefill_matches_unchunked(zspa_engines):
    image = fresh(SMALL)
    knobs = dict(keep_rate=0.25, core_ratio=0.3)  # 144 image tokens: spans 5 chunks of 32
    whole_llm, _ = zspa_engines(FAMILY, max_num_batched_tokens=8192)
    whole = ask(whole_llm, [image], max_tokens=4, **knobs)
    chunked_llm, _ = zspa_engines(FAMILY, max_num_batched_tokens=32, enable_chunked_prefill=True)
    chunked = ask(chunked_llm, [image], max_tokens=4, **knobs)
    assert len(chunked.prompt_token_ids) > 32 * 4
    assert list(chunked.outputs[0].token_ids) == list(whole.outputs[0].token_ids)
    assert logprobs_max_diff(chunked, whole, steps=4) < 1e-4
