"""The families pruned through zspa_vllm.frontend.one_run (one run of embed positions per item),
on a real vLLM engine with their tiny random-weight fixtures: ONE battery for all of them,
LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Gemma 3 and InternVL, and LLaVA-1.5 once more on
vLLM's V1 model runner (the rest run Model Runner V2). The checks that need engines of
their own settings are in test_one_run_engine_settings.py.

Per family: one plugin engine (prefix caching on, unchunked) serves the module's tests,
one more (chunked prefill of 32 tokens, prefix caching off) answers the same two
questions; stock vLLM's answers come from a child process (stock_reference). What a
family adds is its ``tests/families.py`` row and a ``Spec``: how transformers' encoder
is called on the HF image processor's outputs (vLLM's: ``zspa_selfcheck.reference.unpruned_rows``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from tests.engine import harness
from tests.engine.harness import fixture_path, logprobs_max_diff, model_class_of, step_logprobs, visual_tokens
from tests.engine.stock_reference import output_record, stock_outputs
from tests.fixtures.images import make_image
from zspa_selfcheck.reference import HF_ROWS, hf_model, image_inputs
from zspa_vllm.worker import selection_log
from zspa_vllm.core.selection import num_kept, select_tokens

pytestmark = pytest.mark.engine

QUESTION = "What is shown in this picture?"
OTHER_QUESTION = "How many red circles are there in the top left corner?"
ATOL = 1e-5  # the same request on another schedule or cache (float32)
HF_ATOL = 1e-4  # vLLM vs transformers (float32)
DIFF_MIN = 1e-3  # a real input change moves some logprob by more than this


def fresh(width: int, height: int) -> tuple[int, int, int]:
    """An image never sent before (an identical one is served from vLLM's caches)."""
    return (width, height, harness.fresh_seed())


@dataclass(frozen=True)
class Spec:
    sizes: tuple[tuple[int, int], tuple[int, int]]  # two sizes (with different n where n depends on size)
    # transformers' unpruned rows of one image: (HF model, HF image-processor outputs) -> (n, d)
    hf_rows: Callable
    hf_forward: Callable = field(default=lambda image_mask: {})  # extra kwargs of the HF forward
    bidirectional: bool = False  # image tokens attend to each other both ways


def _gemma3_hf_forward(image_mask):
    # transformers builds the bidirectional image blocks from token_type_ids (1 = image)
    return {"token_type_ids": image_mask.long()[None]}


SPECS = {
    "llava-1.5": Spec(((336, 336), (640, 480)), HF_ROWS["llava-1.5"]),
    "llava-next": Spec(((500, 300), (1024, 768)), HF_ROWS["llava-next"]),
    "llava-onevision": Spec(((384, 384), (1024, 768)), HF_ROWS["llava-onevision"]),
    "gemma3": Spec(((384, 384), (1024, 768)), HF_ROWS["gemma3"], _gemma3_hf_forward, bidirectional=True),
    "internvl": Spec(((384, 384), (1024, 768)), HF_ROWS["internvl"]),
}


# LLaVA-1.5 again on the V1 runner (its own M-RoPE-free path through vLLM 0.32/0.33's V1)
V1_AGAIN = ["llava-1.5"] if harness.mrv2_requested() else []


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=[*SPECS, *(f"{f}@V1" for f in V1_AGAIN)])
def family(request) -> str:
    # module scope + params: pytest runs every test of one family before the next family
    name, _, runner = request.param.partition("@")
    with harness.runner(runner or None):
        yield name


@pytest.fixture(scope="module")
def engine(family, zspa_engines):
    llm, _ = zspa_engines(family, enable_prefix_caching=True)
    cls = model_class_of(llm)
    assert cls.__module__.startswith("zspa_vllm.models.")
    assert cls.__name__ == "Zspa" + harness.FAMILIES[family].architecture
    return llm


@pytest.fixture(scope="module")
def image_token(family) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fixture_path(family))
    return tokenizer.convert_tokens_to_ids(harness.FAMILIES[family].image_token)


@pytest.fixture(scope="module")
def hf(family):
    return hf_model(fixture_path(family))


def ask(llm, images, question=QUESTION, max_tokens=3, **knobs):
    return harness.ask(llm, images, question, max_tokens, **knobs)


def runs(prompt_ids, token: int) -> list[int]:
    """Lengths of the runs of ``token`` in a prompt, in order."""
    out, prev = [], None
    for t in prompt_ids:
        if t == token and prev == token:
            out[-1] += 1
        elif t == token:
            out.append(1)
        prev = t
    return out


# --------------------------------------------------------------------------- (a) keep all = stock
def test_keep_all_is_stock_vllm(family, engine, image_token):
    small, large = SPECS[family].sizes
    requests = [
        {"images": [(*small, 1)], "question": QUESTION, "max_tokens": 3},
        {"images": [(*small, 2), (*large, 3)], "question": QUESTION, "max_tokens": 3},
        {"images": [(*small, 4)], "question": QUESTION, "max_tokens": 3},  # sensitivity: other pixels
    ]
    stock = stock_outputs(family, requests)
    for knobs in ({}, {"keep_rate": 1.0}, {"keep_rate": 1.0, "core_ratio": 0.7}, {"keep_rate": 0.1, "prune_method": "none"}):
        for i, request in enumerate(requests[:2]):
            out = ask(engine, request["images"], **knobs)
            assert not selection_log.RECENT  # the selection never ran
            ours = output_record(out)
            assert ours["prompt_token_ids"] == stock[i]["prompt_token_ids"]
            assert out.prompt_token_ids.count(image_token) == sum(visual_tokens(family, w, h) for w, h, _ in request["images"])
            assert ours["token_ids"] == stock[i]["token_ids"]
            worst = max(abs(a[t] - b[t]) for a, b in zip(ours["logprobs"], stock[i]["logprobs"]) for t in a)
            print(f"[{family}] {knobs} request {i}: max |dlogprob| vs stock {worst:.1e}")
            assert worst <= ATOL
    # sensitive: stock on other pixels is far from ours
    ours = output_record(ask(engine, requests[0]["images"], keep_rate=1.0))
    assert ours["prompt_token_ids"] == stock[2]["prompt_token_ids"]
    assert max(abs(ours["logprobs"][0][t] - stock[2]["logprobs"][0][t]) for t in ours["logprobs"][0]) > DIFF_MIN


# --------------------------------------------------------------------------- (b) budgets
@pytest.mark.parametrize("keep_rate", [0.1, 0.25, 0.5])
def test_prompt_shrinks_by_n_minus_l(family, engine, image_token, keep_rate):
    for width, height in SPECS[family].sizes:
        image = fresh(width, height)
        full = ask(engine, [image], max_tokens=1)
        out = ask(engine, [image], max_tokens=1, keep_rate=keep_rate)
        n = visual_tokens(family, width, height)  # independent formula (harness)
        l = num_kept(n, keep_rate)
        assert runs(full.prompt_token_ids, image_token) == [n]
        assert runs(out.prompt_token_ids, image_token) == [l]
        assert len(full.prompt_token_ids) - len(out.prompt_token_ids) == n - l
        # every other token (wrappers, separators, text) is where it was
        assert [t for t in out.prompt_token_ids if t != image_token] == [t for t in full.prompt_token_ids if t != image_token]
        assert [(s.num_visual, len(s.kept)) for s in selection_log.RECENT] == [(n, l)]
        print(f"[{family}] {width}x{height} keep_rate={keep_rate}: n={n} l={l}")


@pytest.mark.parametrize("keep_rate", [0.1, 0.25])
def test_two_images_get_their_own_budgets(family, engine, image_token, keep_rate):
    images = [fresh(*size) for size in SPECS[family].sizes]
    ns = [visual_tokens(family, w, h) for w, h, _ in images]
    full = ask(engine, images, max_tokens=1)
    out = ask(engine, images, max_tokens=1, keep_rate=keep_rate)
    ls = [num_kept(n, keep_rate) for n in ns]
    # (a template may put two images back to back: one run of both)
    assert full.prompt_token_ids.count(image_token) == sum(ns)
    assert out.prompt_token_ids.count(image_token) == sum(ls)
    assert len(full.prompt_token_ids) - len(out.prompt_token_ids) == sum(ns) - sum(ls)
    assert [(s.num_visual, len(s.kept)) for s in selection_log.RECENT] == list(zip(ns, ls))
    assert selection_log.RECENT[0].kept != selection_log.RECENT[1].kept  # selected per image


def test_bad_knobs_raise_value_error_naming_the_field(family, engine):
    for knobs, message in [
        ({"keep_rate": 2}, "keep_rate must be in (0, 1], got 2"),
        ({"core_ratio": "lots"}, "core_ratio must be a number, got 'lots'"),
        ({"prune_method": "rand"}, "prune_method must be one of"),
    ]:
        with pytest.raises(ValueError) as err:
            ask(engine, [fresh(*SPECS[family].sizes[0])], max_tokens=1, **knobs)
        assert message in str(err.value)
    assert ask(engine, [fresh(*SPECS[family].sizes[0])], max_tokens=1, keep_rate=0.5).prompt_token_ids  # still serving


# --------------------------------------------------------------------------- (c) selection
def _reference(engine, family, processor, images, query_ids):
    """vLLM's own unpruned rows of each image (the parent class on the HF image
    processor's outputs, one image at a time as the engine sees them) and the query rows
    of the LLM's embedding table."""
    inputs = [image_inputs(processor, make_image(*image)) for image in images]

    def reference(model):
        with torch.inference_mode():
            rows = [harness.unpruned_rows(model, family, i).clone() for i in inputs]
            query = model.get_language_model().embed_input_ids(torch.tensor(query_ids, dtype=torch.long)).clone()
        return rows, query

    return engine.apply_model(reference)[0]


@pytest.mark.parametrize(
    "knobs, core_ratio, num_images",
    [
        ({"keep_rate": 0.25}, 0.2, 1),
        ({"keep_rate": 0.1, "core_ratio": 0.5}, 0.5, 1),
        ({"keep_rate": 0.1, "core_ratio": 0.0}, 0.0, 1),
        ({"keep_rate": 0.1, "prune_method": "relevance"}, 0.2, 1),
        ({"keep_rate": 0.25, "prune_method": "divprune"}, 0.0, 1),
        ({"keep_rate": 0.1, "core_ratio": 0.3}, 0.3, 2),
    ],
    ids=["zspa", "zspa-core.5", "zspa-core0", "relevance", "divprune", "two-images"],
)
def test_kept_indices_equal_select_tokens(family, engine, hf, knobs, core_ratio, num_images):
    _, processor = hf
    method = knobs.get("prune_method", "zspa")
    images = [fresh(*size) for size in SPECS[family].sizes[::-1][:num_images]]
    ask(engine, images, max_tokens=1, **knobs)
    selections = list(selection_log.RECENT)
    query_ids = processor.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    assert [s.query_ids for s in selections] == [tuple(query_ids)] * num_images  # exactly the question's tokens
    rows, query = _reference(engine, family, processor, images, query_ids)
    for selection, item_rows, image in zip(selections, rows, images, strict=True):
        assert item_rows.shape[0] == selection.num_visual == visual_tokens(family, *image[:2])
        assert selection.method == method
        expected = select_tokens(item_rows, query, len(selection.kept), core_ratio, method=method)
        assert list(selection.kept) == expected.tolist()
        # sensitive: without the question the selection differs. Not asserted with no core
        # (core_ratio 0): the question then only picks the first token, from which the
        # diversity picks may reach the same set (gemma3, one image: seen)
        if method != "divprune" and core_ratio > 0:
            assert list(selection.kept) != select_tokens(item_rows, None, len(selection.kept), core_ratio, method=method).tolist()


def test_image_only_prompt_selects_by_diversity(family, engine, hf):
    _, processor = hf
    image = fresh(*SPECS[family].sizes[0])
    ask(engine, [image], "", max_tokens=1, keep_rate=0.1)
    (selection,) = selection_log.RECENT
    assert selection.query_ids == ()
    (rows,), _ = _reference(engine, family, processor, [image], [])
    assert list(selection.kept) == select_tokens(rows, None, num_kept(rows.shape[0], 0.1), 0.2).tolist()


def test_same_request_twice_is_identical(family, engine):
    image = fresh(*SPECS[family].sizes[1])
    a, sel_a = ask(engine, [image], keep_rate=0.25), list(selection_log.RECENT)
    b, sel_b = ask(engine, [image], keep_rate=0.25), list(selection_log.RECENT)
    assert sel_b in (sel_a, [])  # vLLM's caches may serve the second
    assert a.prompt_token_ids == b.prompt_token_ids
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    # the second prefills only past the cached blocks: the same math, summed in
    # another order (observed 0 or 4.8e-7 depending on what ran before)
    assert logprobs_max_diff(a, b, steps=3) <= ATOL
    assert (b.num_cached_tokens or 0) > 0  # prefix caching is on and was hit
    # sensitive: the same comparison fails for another image
    c = ask(engine, [fresh(*SPECS[family].sizes[1])], keep_rate=0.25)
    assert logprobs_max_diff(a, c) > DIFF_MIN


# --------------------------------------------------------------------------- (d) vs transformers
def test_pruned_logprobs_equal_transformers_fed_the_kept_rows(family, engine, hf, image_token):
    model, processor = hf
    spec = SPECS[family]
    images = [fresh(*size) for size in spec.sizes]
    out = ask(engine, images, max_tokens=1, keep_rate=0.25)
    kept = [list(s.kept) for s in selection_log.RECENT]
    ids = torch.tensor(out.prompt_token_ids)
    mask = ids == image_token
    with torch.no_grad():
        rows = [spec.hf_rows(model, image_inputs(processor, make_image(*image))) for image in images]
        assert [r.shape[0] for r in rows] == [visual_tokens(family, w, h) for w, h, _ in images]

        def logprobs(chosen, forward=spec.hf_forward(mask)):
            embeds = model.get_input_embeddings()(ids)
            embeds[mask] = torch.cat([r[k] for r, k in zip(rows, chosen)]).to(embeds.dtype)
            logits = model(inputs_embeds=embeds[None], **forward).logits[0, -1]
            return torch.log_softmax(logits.float(), dim=-1)

        def diff(reference):
            return max(abs(float(reference[t]) - lp) for t, lp in step_logprobs(out, 0).items())

        # vLLM's CPU attention has no bidirectional image blocks (stock included, see
        # test_bidirectional_block_is_the_shortened_run): compare with the same mask
        worst = diff(logprobs(kept, forward={}))
        # sensitive: the first l rows instead of the kept ones are far off
        other = diff(logprobs([list(range(len(k))) for k in kept], forward={}))
        # ... and so is transformers' bidirectional mask over the shortened runs
        both_ways = diff(logprobs(kept)) if spec.bidirectional else None
    print(f"[{family}] pruned vLLM vs transformers on the kept rows: {worst:.1e} (first rows: {other:.1e}, both ways: {both_ways})")
    assert worst <= HF_ATOL
    assert other > DIFF_MIN
    if spec.bidirectional:
        assert both_ways > DIFF_MIN


def test_zspa_show_draws_the_engines_selection(family, engine, tmp_path, monkeypatch):
    """zspa-show's picture of this family's layout (LLaVA-NeXT/OneVision: overview and
    unpadded grid; InternVL: 3 x 4 tiles and the thumbnail) lights exactly the kept tokens."""
    from tests.engine.show_check import check_show

    image = make_image(*fresh(*SPECS[family].sizes[1]))
    check_show(engine, family, image, OTHER_QUESTION, tmp_path, monkeypatch)  # before a test starts another engine


def test_only_gemma3_asks_for_bidirectional_image_attention(family, engine):
    assert engine.llm_engine.vllm_config.model_config.is_mm_prefix_lm == SPECS[family].bidirectional


def test_bidirectional_block_is_the_shortened_run(family, engine, image_token):
    """vLLM's GPU runners build each image's bidirectional block from its placeholder's
    embed range (gpu_model_runner: extract_embeds_range; pinned in test_upstream_hooks);
    the CPU backend has none (supports_mm_prefix is False), so here: the ranges the
    scheduler holds are exactly each image's shortened run."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    if not SPECS[family].bidirectional:
        pytest.skip(f"{family}'s image tokens attend causally: no block to follow")
    assert not CPUAttentionBackend.supports_mm_prefix()
    scheduler = harness.scheduler_of(engine)
    seen = []
    add = scheduler.add_request
    scheduler.add_request = lambda request: (seen.append([f.mm_position for f in request.mm_features]), add(request))[1]
    try:
        images = [fresh(*size) for size in SPECS[family].sizes]
        out = ask(engine, images, max_tokens=1, keep_rate=0.25)
    finally:
        del scheduler.add_request
    ids = out.prompt_token_ids
    starts = [i for i, t in enumerate(ids) if t == image_token and (i == 0 or ids[i - 1] != image_token)]
    ls = [num_kept(visual_tokens(family, w, h), 0.25) for w, h, _ in images]
    (positions,) = seen
    assert [p.extract_embeds_range() for p in positions] == [[(s, s + l - 1)] for s, l in zip(starts, ls)]
    assert all(p.length > l for p, l in zip(positions, ls))  # the wrappers are in the placeholder, not the block


# --------------------------------------------------------------------------- (e) caches, chunks
# Must come after every test using `engine`: it starts a second engine (freeing the first).
def test_chunked_and_uncached_answer_what_cached_unchunked_does(family, engine, zspa_engines, image_token):
    image = fresh(*SPECS[family].sizes[1])
    knobs = {"keep_rate": 0.25}
    cached = []
    for question in (QUESTION, OTHER_QUESTION):
        out = ask(engine, [image], question, **knobs)
        cached.append((out, list(selection_log.RECENT)))
    (a, (sel_a,)), (b, (sel_b,)) = cached
    assert sel_a.kept != sel_b.kept  # the question steers the selection
    # the first question again: its image from the prefix cache or vLLM's encoder cache
    # (nothing selected) or selected again as before, and the first answer
    again = ask(engine, [image], QUESTION, **knobs)
    image_end = len(again.prompt_token_ids) - again.prompt_token_ids[::-1].index(image_token)
    if (again.num_cached_tokens or 0) >= image_end:  # every image token in a cached block
        assert not selection_log.RECENT
    assert list(selection_log.RECENT) in ([], [sel_a])
    assert again.outputs[0].token_ids == a.outputs[0].token_ids
    assert logprobs_max_diff(a, again, steps=3) <= ATOL
    # the runs have one length and place: only the item identity (with its query) keeps
    # the second question off the first one's cached image blocks
    assert runs(a.prompt_token_ids, image_token) == runs(b.prompt_token_ids, image_token)
    first_image = a.prompt_token_ids.index(image_token)
    assert (b.num_cached_tokens or 0) <= first_image
    assert logprobs_max_diff(a, b) > DIFF_MIN

    llm, _ = zspa_engines(family, enable_prefix_caching=False, enable_chunked_prefill=True, max_num_batched_tokens=32)
    # in reverse order: what the other engine answered first does not matter
    for question, (out, selections) in reversed(list(zip((QUESTION, OTHER_QUESTION), cached))):
        other = ask(llm, [image], question, **knobs)
        assert len(other.prompt_token_ids) > 32 * 2  # really chunked
        assert list(selection_log.RECENT) == selections
        assert other.prompt_token_ids == out.prompt_token_ids
        assert other.outputs[0].token_ids == out.outputs[0].token_ids
        assert logprobs_max_diff(other, out, steps=3) <= 1e-4


# --------------------------------------------------------------------------- (f) not one run
def test_gemma3_pan_and_scan_is_refused_when_pruning_and_served_when_not(zspa_engines):
    """Pan-and-scan makes an image several runs (the original, then each crop with text
    between): pruning it is refused with a message naming it, keep_rate 1 serves it."""
    llm, _ = zspa_engines("gemma3")
    wide = [(1600, 400, 1)]  # aspect ratio 4: crops
    full = ask(llm, wide, max_tokens=1, keep_rate=1.0, do_pan_and_scan=True)
    token = llm.llm_engine.model_config.hf_config.image_token_index
    runs_of_soft_tokens = runs(full.prompt_token_ids, token)
    assert len(runs_of_soft_tokens) > 1 and set(runs_of_soft_tokens) == {256}
    with pytest.raises(ValueError, match=r"cannot prune Gemma3MultiModalProcessor's image items with pan-and-scan crops .*\(\d+ runs"):
        ask(llm, wide, max_tokens=1, keep_rate=0.25, do_pan_and_scan=True)
    assert runs(ask(llm, wide, max_tokens=1, keep_rate=0.25).prompt_token_ids, token) == [64]  # without: pruned
