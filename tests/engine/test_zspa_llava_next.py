"""LLaVA-NeXT with the zspa plugin on a real vLLM engine (tiny random-weight fixture).

What is pruned (zspa_vllm/models/llava_next.py): the whole flattened any-resolution
sequence of each image as vLLM's embed_multimodal returns it (base tile + unpadded grid
rows with their image_newline), n = vLLM's placeholder count, l = num_kept(n, keep_rate).

One plugin engine is shared by the module's tests up to (d), whose question test starts a
second one with prefix caching off (which frees the first); the scheduling tests (f)
after it start engines of their own. Stock vLLM's answers come from
a child process (tests/engine/stock_reference.py).
"""

from __future__ import annotations

import pytest

from tests.engine.harness import logprobs_max_diff, sampling, visual_tokens
from tests.engine.stock_reference import output_record, request_messages, stock_outputs

pytestmark = pytest.mark.engine

FAMILY = "llava-next"
IMAGE_TOKEN_ID = 885  # tests/fixtures/models/llava-next/fixture.json
QUESTION = "What is shown in this picture?"
OTHER_QUESTION = "How many red circles are there in the top left corner?"
SIZES = [(336, 336), (1024, 768)]
KEEP_RATES = [0.1, 0.25, 0.5]
LOGPROB_ATOL = 1e-5  # plugin at keep_rate=1 vs stock vLLM
DIFF_MIN = 1e-3  # a real input change moves some logprob by more than this


@pytest.fixture(scope="module")
def engines(zspa_engines):
    return zspa_engines


@pytest.fixture(scope="module")
def engine(engines):
    from tests.engine.harness import model_class_of

    llm, _ = engines(FAMILY)
    cls = model_class_of(llm)
    assert (cls.__module__, cls.__name__) == (
        "zspa_vllm.models.llava_next",
        "ZspaLlavaNextForConditionalGeneration",
    )
    return llm


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tests.engine.harness import fixture_path

    return AutoTokenizer.from_pretrained(fixture_path(FAMILY))


def req(images, question=QUESTION, max_tokens=1) -> dict:
    """A request spec in stock_reference's format: images as (width, height, seed)."""
    return {"images": list(images), "question": question, "max_tokens": max_tokens}


def run(llm, spec: dict, **knobs):
    """One chat request; returns (output, the selections the model recorded for it)."""
    from zspa_vllm.worker import selection_log

    selection_log.clear()
    (out,) = llm.chat(
        request_messages(spec),
        sampling(max_tokens=spec["max_tokens"]),
        use_tqdm=False,
        mm_processor_kwargs=knobs or None,
    )
    return out, list(selection_log.RECENT)


def image_runs(prompt_ids) -> list[int]:
    """Lengths of the consecutive runs of image placeholder tokens, in order."""
    runs, prev = [], None
    for tid in prompt_ids:
        if tid == IMAGE_TOKEN_ID:
            if prev == IMAGE_TOKEN_ID:
                runs[-1] += 1
            else:
                runs.append(1)
        prev = tid
    return runs


def budget(n: int, keep_rate: float) -> int:
    from zspa_vllm.core.selection import num_kept

    return num_kept(n, keep_rate)


# --------------------------------------------------------------------------- (a) keep all
STOCK_REQUESTS = [
    req([(336, 336, 1)], max_tokens=3),
    req([(1024, 768, 2)], max_tokens=3),
    req([(336, 336, 3), (1024, 768, 4)], max_tokens=3),
]
# sensitivity: same prompt as STOCK_REQUESTS[0], other pixels
STOCK_OTHER_IMAGE = req([(336, 336, 5)], max_tokens=3)


@pytest.fixture(scope="module")
def stock():
    return stock_outputs(FAMILY, STOCK_REQUESTS + [STOCK_OTHER_IMAGE])


@pytest.mark.parametrize("knobs", [{"keep_rate": 1.0}, {"keep_rate": 0.1, "prune_method": "none"}],
                         ids=["keep_rate=1", "method=none"])
def test_keep_all_matches_stock_vllm(engine, stock, knobs):
    for i, spec in enumerate(STOCK_REQUESTS):
        out, selections = run(engine, spec, **knobs)
        assert selections == []  # selection bypassed entirely
        ours, ref = output_record(out), stock[i]
        assert ours["prompt_token_ids"] == ref["prompt_token_ids"]
        assert image_runs(ours["prompt_token_ids"]) == [visual_tokens(FAMILY, w, h) for w, h, _ in spec["images"]]
        assert ours["token_ids"] == ref["token_ids"]
        worst = _max_logprob_diff(ours["logprobs"], ref["logprobs"])
        print(f"[{knobs}] request {i}: max |dlogprob| vs stock = {worst:.2e}")
        assert worst <= LOGPROB_ATOL
    # the comparison is sensitive: stock on another image is far from ours on this one
    ours, _ = run(engine, STOCK_REQUESTS[0], **knobs)
    other = stock[len(STOCK_REQUESTS)]
    assert output_record(ours)["prompt_token_ids"] == other["prompt_token_ids"]
    assert _max_logprob_diff(output_record(ours)["logprobs"][:1], other["logprobs"][:1]) > DIFF_MIN


def _max_logprob_diff(a: list[dict], b: list[dict]) -> float:
    worst = 0.0
    for step_a, step_b in zip(a, b, strict=True):
        assert step_a.keys() == step_b.keys()
        worst = max(worst, max(abs(step_a[t] - step_b[t]) for t in step_a))
    return worst


# --------------------------------------------------------------------------- (b) budgets
@pytest.fixture(scope="module")
def unpruned(engine):
    """keep_rate=1 outputs of the single-image requests, by size."""
    return {size: run(engine, req([(*size, 1)]))[0] for size in SIZES}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("keep_rate", KEEP_RATES)
def test_prompt_shrinks_by_n_minus_l(engine, unpruned, size, keep_rate):
    full = unpruned[size]
    n = visual_tokens(FAMILY, *size)  # independent formula (harness), == vLLM's count
    l = budget(n, keep_rate)
    out, selections = run(engine, req([(*size, 1)]), keep_rate=keep_rate)

    assert image_runs(full.prompt_token_ids) == [n]
    assert image_runs(out.prompt_token_ids) == [l]
    assert len(full.prompt_token_ids) - len(out.prompt_token_ids) == n - l
    text = [t for t in out.prompt_token_ids if t != IMAGE_TOKEN_ID]
    assert text == [t for t in full.prompt_token_ids if t != IMAGE_TOKEN_ID]
    # the model received n tokens for the image and kept exactly l of them
    assert [(s.num_visual, len(s.kept)) for s in selections] == [(n, l)]
    print(f"[llava-next] {size[0]}x{size[1]} keep_rate={keep_rate}: n={n} l={l}")


@pytest.mark.parametrize("keep_rate", [0.1, 0.25])
def test_two_images_get_their_own_budgets(engine, keep_rate):
    spec = req([(336, 336, 3), (1024, 768, 4)])
    full, _ = run(engine, spec)
    out, selections = run(engine, spec, keep_rate=keep_rate)
    ns = [visual_tokens(FAMILY, 336, 336), visual_tokens(FAMILY, 1024, 768)]
    ls = [budget(n, keep_rate) for n in ns]
    assert ns[0] != ns[1]
    assert image_runs(full.prompt_token_ids) == ns
    assert image_runs(out.prompt_token_ids) == ls  # in prompt order
    assert len(full.prompt_token_ids) - len(out.prompt_token_ids) == sum(ns) - sum(ls)
    assert [(s.num_visual, len(s.kept)) for s in selections] == list(zip(ns, ls))


# --------------------------------------------------------------------------- (c) selection
def _reference_inputs(llm, images, query_ids):
    """Unpruned embeddings of each image (the parent class's embed_multimodal on the HF
    image processor's pixels, one image at a time as the engine sees them) and the query
    rows of the LLM's embedding table."""
    import torch
    from transformers import AutoProcessor
    from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration

    from tests.engine.harness import fixture_path

    image_processor = AutoProcessor.from_pretrained(fixture_path(FAMILY)).image_processor
    processed = [image_processor(images=[image], return_tensors="pt") for image in images]

    def compute(model):
        with torch.inference_mode():
            visual = [
                LlavaNextForConditionalGeneration.embed_multimodal(
                    model, pixel_values=p["pixel_values"], image_sizes=p["image_sizes"]
                )[0].clone()
                for p in processed
            ]
            ids = torch.tensor(query_ids, dtype=torch.long)
            query = model.get_language_model().embed_input_ids(ids).clone()
        return visual, query

    return llm.apply_model(compute)[0]


@pytest.mark.parametrize(
    "images, knobs, core_ratio",
    [
        ([(336, 336, 6)], {"keep_rate": 0.25}, 0.2),  # default core_ratio 0.2
        ([(1024, 768, 7)], {"keep_rate": 0.1, "core_ratio": 0.5}, 0.5),
        ([(1024, 768, 7)], {"keep_rate": 0.25, "prune_method": "divprune"}, 0.0),
        ([(336, 336, 8), (1024, 768, 9)], {"keep_rate": 0.1, "core_ratio": 0.3}, 0.3),
    ],
    ids=["336-zspa", "1024x768-zspa-core.5", "1024x768-divprune", "two-images"],
)
def test_kept_indices_equal_select_tokens(engine, tokenizer, images, knobs, core_ratio):
    from tests.fixtures.images import make_image
    from zspa_vllm.core.selection import select_tokens

    method = knobs.get("prune_method", "zspa")
    _, selections = run(engine, req(images), **knobs)
    query_ids = tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    assert [s.query_ids for s in selections] == [tuple(query_ids)] * len(images)

    visual, query = _reference_inputs(engine, [make_image(w, h, s) for w, h, s in images], query_ids)
    assert len(selections) == len(visual)
    for sel, emb, (w, h, _) in zip(selections, visual, images):
        n = visual_tokens(FAMILY, w, h)
        assert emb.shape[0] == sel.num_visual == n
        expected = select_tokens(emb, query, budget(n, knobs["keep_rate"]), core_ratio, method=method)
        assert sel.method == method
        assert list(sel.kept) == expected.tolist()
        if method != "divprune":  # sensitive: without the query the selection differs
            without_query = select_tokens(emb, None, len(sel.kept), core_ratio, method=method)
            assert list(sel.kept) != without_query.tolist()


# --------------------------------------------------------------------------- (e) repeat
def test_same_request_twice_is_identical(engine):
    spec = req([(1024, 768, 10)], max_tokens=3)
    a, sel_a = run(engine, spec, keep_rate=0.25)
    b, sel_b = run(engine, spec, keep_rate=0.25)
    assert sel_a == sel_b or sel_b == []  # encoder cache may serve the second
    assert a.prompt_token_ids == b.prompt_token_ids
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    # the second prefills only past the cached blocks: the same math, summed in
    # another order (observed 0 or 4.8e-7 depending on what ran before)
    assert logprobs_max_diff(a, b, steps=3) <= LOGPROB_ATOL
    assert (b.num_cached_tokens or 0) > 0  # prefix caching is on and was hit
    # sensitive: the same comparison fails for another image
    c, _ = run(engine, req([(1024, 768, 11)], max_tokens=3), keep_rate=0.25)
    assert logprobs_max_diff(a, c) > DIFF_MIN


# --------------------------------------------------------------------------- (d) questions
# Must come after every test using `engine`: it replaces it with one without prefix caching.
def test_question_changes_selection_and_prefix_cache_is_per_question(engine, engines):
    image = [(1024, 768, 12)]
    specs = [req(image, QUESTION, max_tokens=3), req(image, OTHER_QUESTION, max_tokens=3)]
    knobs = {"keep_rate": 0.25}
    on = [run(engine, spec, **knobs) for spec in specs]  # prefix caching on (default)
    (out_a, sel_a), (out_b, sel_b) = on
    assert len(sel_a) == len(sel_b) == 1
    assert len(sel_a[0].kept) == len(sel_b[0].kept)
    assert sel_a[0].kept != sel_b[0].kept  # the question steers the selection
    # the image run has the same length and position for both questions, so only the
    # multimodal hash (which carries the query) keeps B off A's cached image blocks
    assert image_runs(out_a.prompt_token_ids) == image_runs(out_b.prompt_token_ids)
    assert (out_b.num_cached_tokens or 0) == 0
    assert logprobs_max_diff(out_a, out_b) > DIFF_MIN

    llm_off, _ = engines(FAMILY, enable_prefix_caching=False)
    for spec, (out_on, sel_on) in zip(reversed(specs), reversed(on)):
        out_off, sel_off = run(llm_off, spec, **knobs)
        assert sel_off == sel_on
        assert out_off.prompt_token_ids == out_on.prompt_token_ids
        assert out_off.outputs[0].token_ids == out_on.outputs[0].token_ids
        assert logprobs_max_diff(out_off, out_on, steps=3) <= LOGPROB_ATOL


# --------------------------------------------------------------------------- (f) scheduling
# These start engines of their own (after the module's engine is gone).
def test_chunked_prefill_matches_unchunked(engines):
    spec = req([(1024, 768, 13)], max_tokens=3)
    knobs = {"keep_rate": 0.25, "core_ratio": 0.3}  # 585 image tokens: ~10 chunks of 64
    whole_llm, _ = engines(FAMILY, max_num_batched_tokens=8192)
    whole, sel_whole = run(whole_llm, spec, **knobs)
    chunked_llm, _ = engines(FAMILY, max_num_batched_tokens=64, enable_chunked_prefill=True)
    chunked, sel_chunked = run(chunked_llm, spec, **knobs)
    assert image_runs(chunked.prompt_token_ids) == [budget(visual_tokens(FAMILY, 1024, 768), 0.25)]
    assert len(chunked.prompt_token_ids) > 64 * 8
    assert sel_chunked == sel_whole
    assert chunked.outputs[0].token_ids == whole.outputs[0].token_ids
    assert logprobs_max_diff(chunked, whole, steps=3) < 1e-4


def test_zspa_show_draws_the_engines_selection_on_overview_and_grid(engines, tmp_path, monkeypatch):
    from tests.engine.show_check import check_show
    from tests.fixtures.images import make_image

    llm, _ = engines(FAMILY)  # its own engine: the test before replaced the module's
    check_show(llm, FAMILY, make_image(500, 300, 4242), OTHER_QUESTION, tmp_path, monkeypatch)


def test_many_images_in_flight_do_not_over_pack_the_encoder(engines):
    from tests.engine.harness import check_encoder_steps_fit_the_budget

    encoder_budget = 3000  # two 336x336 images (1176 tokens each) unpruned
    llm, _ = engines(FAMILY, max_num_batched_tokens=encoder_budget, max_num_seqs=32)
    n = visual_tokens(FAMILY, 336, 336)
    seeds = iter(range(100, 1000))

    def run():
        specs = [req([(336, 336, next(seeds))]) for _ in range(12)]
        outs = llm.chat(
            [request_messages(spec) for spec in specs],
            sampling(max_tokens=1),
            mm_processor_kwargs={"keep_rate": 0.1},
            use_tqdm=False,
        )
        assert [image_runs(o.prompt_token_ids) for o in outs] == [[budget(n, 0.1)]] * 12

    check_encoder_steps_fit_the_budget(FAMILY, llm, run, 12, n)
