"""Pruning keeps vLLM's caches in a conversation, and runs the vision encoder once per
image (zspa_vllm/core/query.py, processor.py, encoder_cache.py), on the real CPU engine.

Per family two engines, one alive at a time: "cached" (prefix caching on, the encoder
output cache at its default size) and "uncached" (prefix caching off, the encoder output
cache off, precomputed image embeddings allowed): the reference every cached answer must
equal. Vision-encoder runs are counted with a forward hook on the model's vision tower.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.engine import harness
from tests.engine.harness import FAMILIES, HYBRID_FAMILIES, QWEN_FAMILIES, fixture_path, model_class_of, sampling, vision_tower_calls, visual_tokens
from tests.fixtures.images import make_image
from zspa_vllm.worker import selection_log
from zspa_vllm.envs import ENCODER_CACHE_MIB as ENCODER_CACHE_MIB_ENV
from zspa_vllm.core.selection import num_kept, random_seed, select_tokens

pytestmark = pytest.mark.engine

KEEP = 0.25
SIZE = (1024, 768)  # n = 576 / 2340 / 999 / 768: the pruned image spans whole KV blocks
# Qwen3.5 (hybrid): vLLM's KV blocks are 256 tokens there (see test_zspa_qwen.py), so the
# turn-1 image is larger: n = 1200, 300 kept
HYBRID_SIZE = (1280, 960)
QUESTIONS = [
    "What is shown in this picture?",
    "What colour is the largest shape?",
    "How many shapes are on the left?",
    "Is there a red circle?",
    "Describe the bottom right corner.",
    "Which shape is closest to the top?",
    "Are any two shapes touching?",
    "What is the background colour?",
]
REPLIES = ["Some shapes.", "Red, I think."]



def fresh_image(size=SIZE):
    return make_image(*size, harness.fresh_seed())


def turn_one_image(family):
    return fresh_image(HYBRID_SIZE if family in HYBRID_FAMILIES else SIZE)


class Engines:
    """The family's two engines, one alive at a time."""

    def __init__(self, start, family: str):
        self._start, self.family, self.name, self.llm = start, family, None, None

    def get(self, name: str):
        if self.name != name:
            video = 1 if self.family in QWEN_FAMILIES else 0
            if name == "cached":
                os.environ.pop(ENCODER_CACHE_MIB_ENV, None)  # the default size
                kwargs = dict(enable_prefix_caching=True, limit_mm_per_prompt={"image": 2, "video": video})
            else:
                os.environ[ENCODER_CACHE_MIB_ENV] = "0"  # read by each worker's model at start-up
                kwargs = dict(enable_prefix_caching=False, enable_mm_embeds=True)
            try:
                self.llm, _ = self._start(self.family, **kwargs)
            finally:
                os.environ.pop(ENCODER_CACHE_MIB_ENV, None)
            self.name = name
            assert model_class_of(self.llm).__module__.startswith("zspa_vllm.models")
        return self.llm


@pytest.fixture(scope="module", params=list(FAMILIES))
def engines(request, zspa_engines):
    # module scope + params: pytest runs every test of one family before the next family
    return Engines(zspa_engines, request.param)


def user(text: str | None, *images) -> dict:
    parts = [{"type": "image_pil", "image_pil": image} for image in images]
    return {"role": "user", "content": parts + ([{"type": "text", "text": text}] if text else [])}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def chat(llm, messages, **knobs):
    selection_log.clear()
    (out,) = llm.chat(messages, sampling(3), mm_processor_kwargs=knobs or None, use_tqdm=False)
    return out


def run_conversation(llm, family, turns, **knobs):
    """Each turn: (question, images); fixed assistant replies in between. Returns, per
    turn, (output, selections made, vision-tower runs)."""
    messages, results = [], []
    for k, (question, images) in enumerate(turns):
        if k:
            messages.append(assistant(REPLIES[k - 1]))
        messages.append(user(question, *images))
        before = vision_tower_calls(llm, family)
        out = chat(llm, messages, **knobs)
        results.append((out, list(selection_log.RECENT), vision_tower_calls(llm, family) - before))
    return results


def image_offsets(token_ids, family) -> list[int]:
    """Start of each image's placeholder run."""
    tokenizer_ids = list(token_ids)
    image = image_token_id(family)
    return [i for i, t in enumerate(tokenizer_ids) if t == image and (i == 0 or tokenizer_ids[i - 1] != image)]


def image_token_id(family) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fixture_path(family)).convert_tokens_to_ids(FAMILIES[family].image_token)


def sequence(out) -> list[int]:
    return list(out.prompt_token_ids) + list(out.outputs[0].token_ids)


def same_output(a, b, family) -> float:
    """The same conversation turn with and without caches answers alike (within the
    family's tolerance: float32 1e-5, bfloat16 rounding for Qwen3.5)."""
    tol = harness.tolerance(family)
    assert list(a.prompt_token_ids) == list(b.prompt_token_ids)
    return harness.assert_same_answer(a, b, tol.schedule, tol.steps)


def three_turns(family):
    """One image in turn 1; the Qwen families also get a second image in turn 2."""
    second = [fresh_image((640, 480))] if family in QWEN_FAMILIES else []
    return [(QUESTIONS[0], [turn_one_image(family)]), (QUESTIONS[1], second), (QUESTIONS[2], [])]


# --------------------------------------------------------------------------- chat
def test_later_turns_reuse_the_prefix_cache_and_never_re_encode(engines):
    family = engines.family
    llm = engines.get("cached")
    block = llm.llm_engine.vllm_config.cache_config.block_size
    report, conversations = [], []
    for label, knobs in (("stock (keep_rate 1)", {}), (f"keep_rate {KEEP}", {"keep_rate": KEEP})):
        # this conversation's own turns only: the other one's images share placeholder
        # token ids but not identities, which vLLM's block hashes include
        history: list[list[int]] = []
        turns = three_turns(family)
        results = run_conversation(llm, family, turns, **knobs)
        for k, (out, selections, encoder_runs) in enumerate(results):
            prompt = list(out.prompt_token_ids)
            expected = harness.expected_cached_tokens(prompt, history, block)
            assert out.num_cached_tokens == expected, (label, k)
            if k:
                # every full block of the earlier turn's prompt comes from the cache ...
                previous = list(results[k - 1][0].prompt_token_ids)
                assert out.num_cached_tokens >= len(previous) // block * block > 0
                # ... so the vision encoder runs for this turn's new images only
                assert encoder_runs == len(turns[k][1])
                if knobs:
                    assert len(selections) == len(turns[k][1])
            history.append(sequence(out))
        report.append(f"{label}: cached {[r[0].num_cached_tokens for r in results]} of {[len(r[0].prompt_token_ids) for r in results]}")
        conversations.append((turns, knobs, results))
    print(f"\n[{family}] 3-turn chat, prefix-cached tokens per turn: " + "; ".join(report))
    # what the caches served answers as if nothing were cached (positions of cached
    # pruned images included: vLLM keeps only their grid once their KV is cached)
    for turns, knobs, results in conversations:
        reference = run_conversation(engines.get("uncached"), family, turns, **knobs)
        for (out, _, _), (ref, _, _) in zip(results, reference):
            same_output(out, ref, family)


def test_last_turn_re_selects_for_the_newest_question_without_re_encoding(engines):
    family = engines.family
    turns = [(QUESTIONS[0], [turn_one_image(family)]), (QUESTIONS[1], []), (QUESTIONS[2], [])]
    llm = engines.get("cached")
    block = llm.llm_engine.vllm_config.cache_config.block_size
    tokenizer = llm.get_tokenizer()
    results = run_conversation(llm, family, turns, keep_rate=KEEP, query_scope="last_turn")
    for k, (out, selections, encoder_runs) in enumerate(results):
        (selection,) = selections  # the turn-1 image, selected again at every turn
        assert list(selection.query_ids) == tokenizer.encode(turns[k][0], add_special_tokens=False)
        assert encoder_runs == (1 if k == 0 else 0)  # the encoder-output cache serves it
        if k:
            # the image's identity changed with the question: only blocks before it are cached
            (offset,) = image_offsets(out.prompt_token_ids, family)
            assert out.num_cached_tokens == offset // block * block
            assert out.num_cached_tokens < len(results[k - 1][0].prompt_token_ids) // block * block
    kept = [r[1][0].kept for r in results]
    assert len(set(kept)) > 1  # the newest question moved the selection

    reference = run_conversation(engines.get("uncached"), family, turns, keep_rate=KEEP, query_scope="last_turn")
    for (out, selections, _), (ref, ref_selections, _) in zip(results, reference):
        assert [s.kept for s in selections] == [s.kept for s in ref_selections]
        same_output(out, ref, family)


def test_first_scope_keeps_the_first_questions_selection(engines):
    """query_scope "first": separate questions about one image keep the selection made
    for the first, so its placeholders and identity too: later questions reuse the
    image's KV from the prefix cache like stock vLLM. Other knobs select afresh; the same
    questions under image_turn lose the image's cache (the sensitivity)."""
    family = engines.family
    llm = engines.get("cached")
    block = llm.llm_engine.vllm_config.cache_config.block_size
    tokenizer = llm.get_tokenizer()
    image = turn_one_image(family)
    n = visual_tokens(family, *image.size)
    asked = [QUESTIONS[3], QUESTIONS[4], QUESTIONS[6]]
    runs_before = vision_tower_calls(llm, family)
    outs, history = [], []
    for k, question in enumerate(asked):
        outs.append(chat(llm, [user(question, image)], keep_rate=KEEP, query_scope="first"))
        selections = list(selection_log.RECENT)
        if k == 0:
            (selection,) = selections
            assert list(selection.query_ids) == tokenizer.encode(asked[0], add_special_tokens=False)
            first_kept = selection.kept
            assert len(first_kept) == num_kept(n, KEEP)
        else:
            # the same placeholders and identity as the first: every full block up to the
            # question comes from the cache; the image's last partial block, if any, is
            # selected again for the first question
            prompt = list(outs[k].prompt_token_ids)
            assert outs[k].num_cached_tokens == harness.expected_cached_tokens(prompt, history, block)
            (offset,) = image_offsets(prompt, family)
            assert outs[k].num_cached_tokens > offset // block * block
            for selection in selections:
                assert list(selection.query_ids) == tokenizer.encode(asked[0], add_special_tokens=False)
                assert selection.kept == first_kept
        history.append(sequence(outs[k]))
    assert vision_tower_calls(llm, family) - runs_before == 1
    assert list(outs[1].prompt_token_ids)[: offset + num_kept(n, KEEP)] == list(outs[0].prompt_token_ids)[: offset + num_kept(n, KEEP)]

    # other knobs: a selection of their own, for the question they are first asked with
    chat(llm, [user(asked[1], image)], keep_rate=0.5, query_scope="first")
    (selection,) = selection_log.RECENT
    assert list(selection.query_ids) == tokenizer.encode(asked[1], add_special_tokens=False)
    assert len(selection.kept) == num_kept(n, 0.5)
    # the sensitivity: image_turn selects for the question, a new identity, so only the
    # blocks before the image come from the cache
    out = chat(llm, [user(asked[2], image)], keep_rate=KEEP)
    (selection,) = selection_log.RECENT
    assert list(selection.query_ids) == tokenizer.encode(asked[2], add_special_tokens=False)
    assert out.num_cached_tokens == offset // block * block < outs[2].num_cached_tokens
    print(f"\n[{family}] query_scope first, 3 questions about one image: prefix-cached "
          f"{[o.num_cached_tokens for o in outs]} of {[len(o.prompt_token_ids) for o in outs]}; image_turn on the "
          f"third question: {out.num_cached_tokens}")


def test_random_keeps_one_set_per_image_whatever_the_question(engines):
    """prune_method "random": the kept tokens are drawn from the image's content key
    (exactly select_tokens' draw on the cached rows), so a new question about the image
    keeps them and reuses its KV from the prefix cache; another image draws others."""
    family = engines.family
    llm = engines.get("cached")
    block = llm.llm_engine.vllm_config.cache_config.block_size
    image = turn_one_image(family)
    keep = num_kept(visual_tokens(family, *image.size), KEEP)
    keys_before = set(llm.apply_model(lambda m: list(m._zspa_cache._entries))[0])
    first = chat(llm, [user(QUESTIONS[0], image)], keep_rate=KEEP, prune_method="random")
    (selection,) = selection_log.RECENT
    assert selection.method == "random" and len(selection.kept) == keep and selection.core == ()
    (key,) = set(llm.apply_model(lambda m: list(m._zspa_cache._entries))[0]) - keys_before

    def drawn(model):
        rows = model._zspa_cache._entries[key]
        return tuple(select_tokens(rows, None, keep, 0.0, method="random", seed=random_seed(key)).tolist())

    assert selection.kept == llm.apply_model(drawn)[0]
    second = chat(llm, [user(QUESTIONS[1], image)], keep_rate=KEEP, prune_method="random")
    prompt = list(second.prompt_token_ids)
    (offset,) = image_offsets(prompt, family)
    assert second.num_cached_tokens == harness.expected_cached_tokens(prompt, [sequence(first)], block) > offset // block * block
    assert all(s.kept == selection.kept for s in selection_log.RECENT)  # a re-selected tail block draws the same
    chat(llm, [user(QUESTIONS[0], turn_one_image(family))], keep_rate=KEEP, prune_method="random")
    assert selection_log.RECENT[0].kept != selection.kept  # another image, another draw


def test_same_image_many_questions_encodes_once(engines):
    family = engines.family
    image = fresh_image()
    n, keep = visual_tokens(family, *SIZE), num_kept(visual_tokens(family, *SIZE), KEEP)
    llm = engines.get("cached")
    tokenizer = llm.get_tokenizer()
    keys_before = set(llm.apply_model(lambda m: list(m._zspa_cache._entries))[0])
    runs_before = vision_tower_calls(llm, family)
    outs, kept_sets = [], []
    for question in QUESTIONS:
        outs.append(chat(llm, [user(question, image)], keep_rate=KEEP))
        (selection,) = selection_log.RECENT
        assert selection.num_visual == n and len(selection.kept) == keep
        kept_sets.append(selection.kept)
    assert vision_tower_calls(llm, family) - runs_before == 1
    (key,) = set(llm.apply_model(lambda m: list(m._zspa_cache._entries))[0]) - keys_before

    def expected(model):
        cached = model._zspa_cache._entries[key][:, : model.config.text_config.hidden_size]  # w/o Qwen3 deepstack
        embed = model.get_language_model().embed_input_ids
        with torch.no_grad():
            return [
                tuple(select_tokens(cached, embed(torch.tensor(tokenizer.encode(q, add_special_tokens=False))), keep, 0.2).tolist())
                for q in QUESTIONS
            ]

    assert kept_sets == llm.apply_model(expected)[0]
    assert len(set(kept_sets)) > 1

    llm = engines.get("uncached")
    runs_before = vision_tower_calls(llm, family)
    diffs, spread = [], 0.0
    for question, out, kept in zip(QUESTIONS, outs, kept_sets):
        ref = chat(llm, [user(question, image)], keep_rate=KEEP)
        assert selection_log.RECENT[-1].kept == kept
        diffs.append(same_output(out, ref, family))
        spread = max(spread, harness.logprobs_max_diff(outs[0], ref, 1) if question != QUESTIONS[0] else 0.0)
    assert vision_tower_calls(llm, family) - runs_before == len(QUESTIONS)  # no cache here
    assert spread > harness.must_differ_by(harness.tolerance(family))  # the comparison sees the question
    print(f"\n[{family}] 8 questions, one image: 1 encoder run (uncached: 8); {len(set(kept_sets))} distinct "
          f"kept sets; max |dlogprob| vs uncached {max(diffs):.1e}, across questions {spread:.1e}")


# --------------------------------------------------------------------------- embeddings
def test_precomputed_embeddings_are_selected_like_pixels(engines):
    """--enable-mm-embeds: the placeholder run is shortened for embeddings too, so the
    model must select on them (not hand over all n rows for vLLM to cut at l)."""
    family = engines.family
    llm = engines.get("uncached")
    image = fresh_image((640, 480))
    prompt = FAMILIES[family].prompt_format.format(q=QUESTIONS[3])

    def generate(data, **knobs):
        selection_log.clear()
        request = {"prompt": prompt, "multi_modal_data": {"image": data}, "mm_processor_kwargs": knobs}
        return llm.generate(request, sampling(3), use_tqdm=False)[0], list(selection_log.RECENT)

    pixels, pixel_selections = generate(image, keep_rate=KEEP)
    embeds = embeddings_of(llm, family, image)
    if not FAMILIES[family].takes_embeddings:  # Gemma 3: vLLM itself refuses them
        with pytest.raises(TypeError, match="found type: .*ImageEmbeddingItems"):
            generate(embeds, keep_rate=KEEP)
        return
    given, given_selections = generate(embeds, keep_rate=KEEP)
    assert [s.kept for s in given_selections] == [s.kept for s in pixel_selections]
    assert len(given_selections[0].kept) == num_kept(given_selections[0].num_visual, KEEP)
    same_output(given, pixels, family)
    # sensitivity: the same embeddings unpruned make a longer prompt and other logprobs
    unpruned, none = generate(embeds)
    assert not none and len(unpruned.prompt_token_ids) > len(given.prompt_token_ids)
    assert harness.logprobs_max_diff(unpruned, given) > harness.must_differ_by(harness.tolerance(family))


def embeddings_of(llm, family, image):
    """What vLLM's own vision encoder + projector make of ``image``, in the form the
    family's image-embeddings input takes."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(fixture_path(family))
    kwargs = dict(do_rescale=False, do_normalize=False) if family in QWEN_FAMILIES else {}
    inputs = processor.image_processor(images=[image], return_tensors="pt", **kwargs)

    def encode(model):
        parent = harness.vllm_class_of(model)
        with torch.no_grad():
            if family in QWEN_FAMILIES:
                out = parent.embed_multimodal(
                    model, pixel_values=inputs["pixel_values"].to(torch.uint8), image_grid_thw=inputs["image_grid_thw"]
                )
            else:
                out = [harness.unpruned_rows(model, family, inputs)]
        return out[0].clone()

    visual = llm.apply_model(encode)[0]
    if family in QWEN_FAMILIES:
        return {"image_embeds": visual, "image_grid_thw": inputs["image_grid_thw"]}
    return visual[None]
