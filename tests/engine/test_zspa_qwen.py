"""The Qwen families (Qwen2.5-VL, Qwen2-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE) with the zspa plugin
on the real vLLM CPU engine (tiny random-weight fixtures), every test once per family.
Every request has the same system turn (Qwen2/2.5's default, which Qwen3-VL's template
lacks), so the first image token is prompt token 20 in every family.

Images and videos are pruned; M-RoPE positions of kept tokens are the unpruned
ones (zspa_vllm/worker/mrope.py). The key tests are test_(video_)positions_match_transformers:
transformers, fed the kept rows at their original (t, h, w) positions, reproduces vLLM's
logprobs, and the same comparison with other position rules fails.

Four engines, one alive at a time, started in file order: "main" (prefix caching on,
unchunked), "noprefix" (prefix caching off), "chunked" (20 tokens per step; these three
take a video) and "many-images". Stock vLLM's outputs come from a child process started at module begin.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import torch

from tests.engine import harness
from tests.engine.harness import (
    BFLOAT16,
    FAMILIES,
    FLOAT32,
    HYBRID_FAMILIES,
    QWEN_FAMILIES,
    SEPARATION,
    Tolerance,
    assert_same_answer,
    fixture_path,
    must_differ_by,
    model_class_of,
    sampling,
    step_logprobs,
    tolerance,
    visual_tokens,
)
from tests.engine.stock_reference import request_messages, stock_outputs
from tests.fixtures.images import make_image
from zspa_selfcheck.reference import hf_model, main_features, mrope_diffs
from zspa_vllm.worker import selection_log
from zspa_vllm.core.selection import num_kept, select_tokens

pytestmark = pytest.mark.engine

IMAGE, VIDEO = 888, 889  # <|image_pad|>, <|video_pad|> (fixture config.json)
QUESTION = "What is shown in this picture?"
SYSTEM = "You are a helpful assistant."
OTHER_QUESTION = "How many red circles are there in the top left corner?"
# the step's token budget: two to four 336x336 images unpruned (Qwen2/2.5: 144 tokens
# each, Qwen3: 100); vLLM's encoder budget is max(this, the largest image) = 2048
ENCODER_BUDGET = 400
CHUNK = 20  # tokens per step of the "chunked" engine: the first image token is prompt token 20
MEDIA = {"limit_mm_per_prompt": {"image": 2, "video": 1}}
ENGINES = {
    "main": dict(enable_prefix_caching=True, **MEDIA),
    "noprefix": dict(enable_prefix_caching=False, **MEDIA),
    "chunked": dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=CHUNK, **MEDIA),
    "many-images": dict(max_num_batched_tokens=ENCODER_BUDGET, max_num_seqs=32),
}
EXACT_ATOL = 1e-5  # the same computation (float32, or bfloat16 on the same schedule)
DIFF_MIN = 1e-3  # what a real difference moves some logprob by, at least
VIDEO_RULE_MIN = 1e-4  # what a wrong video position rule moves some logprob by, at least (float32)


def fresh(width: int, height: int) -> tuple[int, int, int]:
    """An image never sent before (identical images are served from vLLM's caches
    without running the encoder or our selection again)."""
    return (width, height, harness.fresh_seed())


class Engines:
    """One engine alive at a time; asking for another frees the current one."""

    def __init__(self, start, family: str):
        self._start, self.family, self.name, self.llm = start, family, None, None

    def get(self, name: str):
        if self.name != name:
            self.llm, _ = self._start(self.family, **ENGINES[name])
            self.name = name
            assert model_class_of(self.llm).__name__ == "Zspa" + FAMILIES[self.family].architecture
        return self.llm


# Every family on the runner the environment names (MRv2 unless VLLM_USE_V2_MODEL_RUNNER=0),
# and, where that is MRv2, two families again on V1, which has its own M-RoPE hook
# (zspa_vllm.worker.runner_hooks: _gather_mm_embeddings): one per position rule (Qwen2.5-VL's,
# Qwen3-VL's with deepstack).
V1_AGAIN = ["qwen2.5-vl", "qwen3-vl"] if harness.mrv2_requested() else []


@pytest.fixture(scope="module", params=[*QWEN_FAMILIES, *(f"{f}@V1" for f in V1_AGAIN)])
def family(request) -> str:
    # module scope + params: pytest runs every test of one family before the next family
    name, _, runner = request.param.partition("@")
    with harness.runner(runner or None):
        yield name


@pytest.fixture(scope="module")
def engines(zspa_engines, family):
    return Engines(zspa_engines, family)


def ask(llm, images, question=QUESTION, max_tokens=3, **knobs):
    return harness.ask(llm, images, question, max_tokens, SYSTEM, **knobs)


def image_runs(token_ids) -> list[tuple[int, int]]:
    """(start, length) of each run of image placeholder tokens."""
    runs, i, ids = [], 0, list(token_ids)
    while i < len(ids):
        if ids[i] == IMAGE:
            j = i
            while j < len(ids) and ids[j] == IMAGE:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def max_diff(a, b, steps: int = 1) -> float:
    """Largest |logprob| difference over the first ``steps`` generated tokens (outputs
    or stock records); the greedy tokens must agree."""
    worst = 0.0
    for s in range(steps):
        la, lb = step_logprobs(a, s), step_logprobs(b, s)
        assert la.keys() == lb.keys()
        worst = max(worst, max(abs(la[t] - lb[t]) for t in la))
    return worst


def same_output(a, b, tol: Tolerance = FLOAT32, exact: bool = False) -> float:
    """``a`` and ``b`` answer alike: within ``tol.schedule`` (the same request run on
    another schedule or cache), or EXACT_ATOL over 3 tokens with ``exact``; a greedy
    token may differ only at a near-tie (harness.assert_same_answer)."""
    atol, steps = (EXACT_ATOL, 3) if exact else (tol.schedule, tol.steps)
    assert list(a.prompt_token_ids) == list(b.prompt_token_ids)
    return assert_same_answer(a, b, atol, steps)


# --------------------------------------------------------------------------- stock vLLM
STOCK_REQUESTS = [
    {"images": [(336, 336, 1)], "question": QUESTION, "system": SYSTEM},
    {"images": [(1024, 768, 2)], "question": OTHER_QUESTION, "system": SYSTEM},
    {"images": [(336, 336, 1), (1024, 768, 2)], "question": QUESTION, "system": SYSTEM},
    {"images": [(336, 336, 3)], "question": QUESTION, "system": SYSTEM},  # sensitivity: another image
]


@pytest.fixture(scope="module")
def stock_future(family):
    """Stock vLLM's answers, computed in a child process while our engine starts."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        yield pool.submit(stock_outputs, family, STOCK_REQUESTS)


@pytest.mark.parametrize("knobs", [{}, {"keep_rate": 1.0}, {"keep_rate": 0.25, "prune_method": "none"}], ids=str)
def test_keep_all_is_stock_vllm(engines, stock_future, knobs):
    llm = engines.get("main")
    outs = [ask(llm, [tuple(i) for i in r["images"]], r["question"], **knobs) for r in STOCK_REQUESTS[:3]]
    assert not selection_log.RECENT  # nothing was selected
    stock = stock_future.result()
    for out, ref in zip(outs, stock):
        assert list(out.prompt_token_ids) == ref["prompt_token_ids"]
        assert_same_answer(out, ref, EXACT_ATOL, 3)
    # the comparison sees an image change (same prompt ids, other pixels)
    assert stock[3]["prompt_token_ids"] == stock[0]["prompt_token_ids"]
    assert max_diff(outs[0], stock[3]) > must_differ_by(tolerance(engines.family))


# --------------------------------------------------------------------------- token counts
@pytest.mark.parametrize("size", [(336, 336), (1024, 768)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_prompt_shrinks_by_pruned_tokens(engines, size):
    llm = engines.get("main")
    image = fresh(*size)
    n = visual_tokens(engines.family, *size)
    full = ask(llm, [image])
    assert image_runs(full.prompt_token_ids) == [(20, n)]
    text = [t for t in full.prompt_token_ids if t != IMAGE]
    for rate in (0.1, 0.25, 0.5):
        out = ask(llm, [image], keep_rate=rate)
        kept = num_kept(n, rate)
        print(f"[{engines.family}] {size[0]}x{size[1]} keep_rate={rate}: n={n} l={kept}")
        assert len(out.prompt_token_ids) == len(full.prompt_token_ids) - (n - kept)
        assert image_runs(out.prompt_token_ids) == [(20, kept)]
        assert [t for t in out.prompt_token_ids if t != IMAGE] == text
        (selection,) = selection_log.RECENT
        assert selection.num_visual == n and len(selection.kept) == kept


def test_two_images_each_pruned(engines):
    llm = engines.get("main")
    images = [fresh(336, 336), fresh(1024, 768)]
    ns = [visual_tokens(engines.family, w, h) for w, h, _ in images]
    full = ask(llm, images)
    out = ask(llm, images, keep_rate=0.25)
    kept = [num_kept(n, 0.25) for n in ns]
    assert [length for _, length in image_runs(full.prompt_token_ids)] == ns
    assert [length for _, length in image_runs(out.prompt_token_ids)] == kept
    assert len(full.prompt_token_ids) - len(out.prompt_token_ids) == sum(ns) - sum(kept)
    assert [s.num_visual for s in selection_log.RECENT] == ns


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize(
    "knobs",
    [
        {"keep_rate": 0.25, "core_ratio": 0.5},
        {"keep_rate": 0.1, "prune_method": "relevance"},
        {"keep_rate": 0.1, "prune_method": "divprune"},
    ],
    ids=lambda k: k.get("prune_method", "zspa"),
)
def test_kept_indices_are_select_tokens(engines, knobs):
    """The engine keeps exactly what select_tokens picks from the image's projected
    embeddings (vLLM's own encoder, unpruned) and the question's token embeddings."""
    from transformers import AutoProcessor

    llm = engines.get("main")
    w, h, seed = fresh(1024, 768)
    ask(llm, [(w, h, seed)], **knobs)
    (selection,) = selection_log.RECENT

    tokenizer = llm.get_tokenizer()
    query = tokenizer.encode(QUESTION, add_special_tokens=False)
    assert list(selection.query_ids) == query  # the last user turn's text, nothing else
    n = visual_tokens(engines.family, w, h)
    keep = num_kept(n, knobs["keep_rate"])
    # as the engine gets them: vLLM normalises pixels in the model (mm_device_do_normalize)
    inputs = AutoProcessor.from_pretrained(fixture_path(engines.family)).image_processor(
        images=[make_image(w, h, seed)], do_rescale=False, do_normalize=False, return_tensors="pt"
    )
    pixels = inputs["pixel_values"]
    assert torch.equal(pixels, pixels.round()) and 0 <= pixels.min() and pixels.max() <= 255
    method = knobs.get("prune_method", "zspa")
    core_ratio = knobs.get("core_ratio", 0.2)

    def expected(model):
        with torch.no_grad():
            (visual,) = model.embed_multimodal(
                pixel_values=pixels.to(torch.uint8), image_grid_thw=inputs["image_grid_thw"]
            )
            embedded = model.get_language_model().embed_input_ids(torch.tensor(query))
            kept = select_tokens(main_features(model, visual), embedded, keep, core_ratio, method=method)
        return visual.shape[0], kept.tolist()

    ((num_visual, kept),) = llm.apply_model(expected)
    assert num_visual == n == selection.num_visual
    assert list(selection.kept) == kept
    assert len(kept) == keep


def test_zspa_show_draws_the_engines_selection_on_the_merged_grid(engines, tmp_path, monkeypatch):
    from tests.engine.show_check import check_show

    check_show(engines.get("main"), engines.family, make_image(*fresh(640, 480)), OTHER_QUESTION, tmp_path, monkeypatch)


def test_other_question_other_kept_set_and_prefix_cache(engines):
    """Same image, two questions: different kept sets (so the caches must key on the
    question). Prefix caching on, in either order, gives what prefix caching off gives."""
    image_a, image_b = fresh(336, 336), fresh(336, 336)
    orders = [(image_a, [QUESTION, OTHER_QUESTION]), (image_b, [OTHER_QUESTION, QUESTION])]
    llm = engines.get("main")
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    cached, kept_sets = {}, {}
    for image, questions in orders:
        for q in questions:
            cached[image, q] = ask(llm, [image], q, keep_rate=0.25)
            (selection,) = selection_log.RECENT
            kept_sets[image, q] = selection.kept
        # a repeat is served from the caches and answers alike
        same_output(ask(llm, [image], questions[0], keep_rate=0.25), cached[image, questions[0]], tolerance(engines.family))
        assert not selection_log.RECENT
    for image in (image_a, image_b):
        assert kept_sets[image, QUESTION] != kept_sets[image, OTHER_QUESTION]
        assert max_diff(cached[image, QUESTION], cached[image, OTHER_QUESTION]) > must_differ_by(tolerance(engines.family))

    # A pruned prompt over several KV blocks, asked again, hits every whole block before
    # its last token; the rest of the image is then filled mid-run from its encoder
    # output. Qwen3.5 (hybrid): vLLM's "align" mode keeps the Gated DeltaNet state only
    # at block boundaries, and blocks of >= 256 tokens, so its hit ends inside the image.
    block = llm.llm_engine.vllm_config.cache_config.block_size
    big = fresh(1024, 768)
    first = ask(llm, [big], keep_rate=0.5)
    again = ask(llm, [big], keep_rate=0.5)
    other = ask(llm, [big], OTHER_QUESTION, keep_rate=0.5)
    ((start, run),) = image_runs(first.prompt_token_ids)
    hit = (len(first.prompt_token_ids) - 1) // block * block
    assert start < hit and (hit < start + run or engines.family not in HYBRID_FAMILIES)
    assert (first.num_cached_tokens, again.num_cached_tokens, other.num_cached_tokens) == (0, hit, 0)
    print(f"[{engines.family}] block {block}: a repeat of a {len(first.prompt_token_ids)}-token pruned"
          f" prompt (image at {start}..{start + run}) hit {hit} tokens")

    llm = engines.get("noprefix")
    assert not llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    for image, questions in orders:
        for q in questions:
            out = ask(llm, [image], q, keep_rate=0.25)
            assert selection_log.RECENT[-1].kept == kept_sets[image, q]
            same_output(out, cached[image, q], tolerance(engines.family))
    uncached = ask(llm, [big], keep_rate=0.5)
    same_output(first, uncached, tolerance(engines.family))
    same_output(again, uncached, tolerance(engines.family))


# --------------------------------------------------------------------------- chunked prefill
def test_chunked_prefill_same_as_unchunked(engines):
    """Chunks of CHUNK tokens cut through pruned images: at an image's first token
    (prompt token 20, and the second image of case 2), inside images, and with two
    images in one chunk (case 3); and through a pruned video, asked two questions (the
    chunked engine caches prefixes, the whole one does not). Positions and outputs stay
    those of one step."""
    cases = [
        ([fresh(1024, 768)], 0.1),  # chunk 2 starts on the first image token
        ([fresh(336, 336), fresh(1024, 768)], 0.4),  # image 2 at token 80 (a chunk edge) or 62 (Qwen3)
        ([fresh(336, 336), fresh(336, 336)], 0.1),  # two images in chunk [20, 40)
    ]
    llm = engines.get("noprefix")
    assert llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens >= 2048
    whole = [ask(llm, images, keep_rate=rate) for images, rate in cases]
    starts = [[start for start, _ in image_runs(out.prompt_token_ids)] for out in whole]
    small = visual_tokens(engines.family, 336, 336)
    # Qwen2/2.5: 58 and 15 kept of 144; Qwen3: 40 and 10 of 100 (<|vision_end|><|vision_start|> between)
    second = [20 + num_kept(small, rate) + 2 for rate in (0.4, 0.1)]
    assert starts == [[20], [20, second[0]], [20, second[1]]]
    assert second[1] < 2 * CHUNK  # case 3: both images have tokens in chunk [20, 40)

    # a pruned video of 8 grid steps (from token 20: chunk edges at its start and inside
    # it), two questions: whole and uncached, then chunked with prefix caching on
    video = fresh_video(16)
    questions = (QUESTION, OTHER_QUESTION)
    whole_video, kept_video = {}, {}
    for q in questions:
        whole_video[q] = ask_video(llm, video, question=q, keep_rate=0.5)
        (selection,) = selection_log.RECENT
        kept_video[q] = selection.kept
    assert len(set(kept_video.values())) == len(kept_video)  # prompt-aware: another question, another set

    llm = engines.get("chunked")
    assert llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens == CHUNK
    for (images, rate), ref in zip(cases, whole):
        out = ask(llm, images, keep_rate=rate)
        assert len(out.prompt_token_ids) > 2 * CHUNK
        same_output(out, ref, tolerance(engines.family))
    for q in whole_video:
        out = ask_video(llm, video, question=q, keep_rate=0.5)
        assert selection_log.RECENT[-1].kept == kept_video[q]
        same_output(out, whole_video[q], tolerance(engines.family))
    # a repeat is served from the prefix cache: whole blocks, into or past the video
    # (Qwen3.5's 256-token blocks: the pruned prompt may be shorter than one)
    block = llm.llm_engine.vllm_config.cache_config.block_size
    again = ask_video(llm, video, keep_rate=0.5)
    assert not selection_log.RECENT
    hit = (len(again.prompt_token_ids) - 1) // block * block
    video_at = [i for i, t in enumerate(again.prompt_token_ids) if t == VIDEO]
    assert again.num_cached_tokens == hit and (video_at[0] < hit or (hit == 0 and engines.family in HYBRID_FAMILIES))
    print(f"[{engines.family}] 16-frame video, keep_rate 0.5: prompt {len(again.prompt_token_ids)} tokens, "
          f"video tokens at {video_at[0]}..{video_at[-1]}, repeat hit {again.num_cached_tokens}")
    same_output(again, whole_video[QUESTION], tolerance(engines.family))


# --------------------------------------------------------------------------- M-RoPE
@pytest.fixture(scope="module")
def hf(family):
    return hf_model(fixture_path(family))


@pytest.mark.parametrize(
    "sizes, rate",
    [([(1024, 768)], 0.25), ([(300, 900)], 0.25), ([(336, 336), (300, 900)], 0.1)],
    ids=["1024x768", "300x900-tall", "two-images"],
)
def test_positions_match_transformers(engines, hf, sizes, rate):
    """vLLM's pruned run = transformers on the kept rows at their unpruned positions
    (Qwen3-VL: with the kept rows' deepstack levels, which must matter)."""
    llm = engines.get("main")
    images = [fresh(w, h) for w, h in sizes]
    out = ask(llm, images, keep_rate=rate)
    kept_sets = [s.kept for s in selection_log.RECENT]
    assert len(kept_sets) == len(images)
    diffs, grids, top = mrope_diffs(hf, out, images, kept_sets)
    unpruned, consecutive, width, without_deepstack = (diffs.get(k) for k in ("unpruned", "consecutive", "width", "no-deepstack"))
    print(
        f"[{engines.family}] {sizes} keep_rate={rate}: vLLM vs transformers max |dlogprob| = {unpruned:.1e}"
        f" (consecutive positions: {consecutive:.1e}, text after from width: {width:.1e}"
        + (f", deepstack zeroed: {without_deepstack:.1e})" if without_deepstack is not None else ")")
    )
    tol = tolerance(engines.family)
    assert top == out.outputs[0].token_ids[0] or tol is BFLOAT16 and harness.top2_margin(out) <= 2 * tol.hf
    assert unpruned < tol.hf
    # the comparison sees positions: SEPARATION times beyond the equality tolerance
    wrong = max(DIFF_MIN, SEPARATION * tol.hf)
    assert consecutive > wrong
    if any(gh > gw for gh, gw in grids):  # tall image: max(h, w) is not the width
        assert width > wrong
    if engines.family.startswith("qwen3-vl"):  # the deepstack levels of the kept rows reached the LLM
        assert without_deepstack is not None and without_deepstack > DIFF_MIN


def test_without_the_mrv2_pruner_hook_positions_are_wrong(engines, hf, zspa_engines):
    """MRv2 recomputes M-RoPE positions only through a MultiModalPruner, which vLLM creates
    for EVS video pruning alone; zspa_vllm.worker.runner_hooks creates one for our models. With
    that hook undone, pruned requests must go wrong: in vLLM 0.32 the rows still carry
    their appended position columns and the model fails the request ("Error during index
    put operation", Qwen3-VL's deepstack split); were they stripped, the kept tokens would
    sit at the placeholders' positions and transformers at the unpruned ones would disagree."""
    if not harness.mrv2_requested():
        pytest.skip("an MRv2 hook: this run uses the V1 runner (VLLM_USE_V2_MODEL_RUNNER=0)")
    from vllm.v1.worker.gpu.model_states import default, mm_pruning

    engines.get("main")  # the hook is installed by the first of our models a process builds
    hooked = mm_pruning.maybe_create_mm_pruner
    original = hooked.__wrapped__  # functools.wraps in zspa_vllm.worker.runner_hooks
    assert default.maybe_create_mm_pruner is hooked
    images = [fresh(300, 900)]
    error = out = None
    try:
        mm_pruning.maybe_create_mm_pruner = default.maybe_create_mm_pruner = original
        engines.name = None  # the next engines.get starts a fresh engine, with the hook back
        llm, _ = zspa_engines(engines.family, **ENGINES["main"])
        try:
            out = ask(llm, images, keep_rate=0.25)
            kept_sets = [s.kept for s in selection_log.RECENT]
        except Exception as raised:  # noqa: BLE001  (any refusal counts: it did not serve wrong tokens)
            error = raised
    finally:
        mm_pruning.maybe_create_mm_pruner = default.maybe_create_mm_pruner = hooked
        harness.free_engine()
    if error is not None:  # vLLM 0.32: every Qwen family (the rows keep their 4 position columns)
        print(f"[{engines.family}] MRv2 without the pruner hook: the request failed: {error!r:.200}")
        return
    diffs, _, _ = mrope_diffs(hf, out, images, kept_sets)
    tol = tolerance(engines.family)
    print(f"[{engines.family}] MRv2 without the pruner hook: vs transformers at unpruned positions {diffs['unpruned']:.1e}")
    assert diffs["unpruned"] > SEPARATION * tol.hf


# --------------------------------------------------------------------------- video
# A video is pruned to one budget across its frames. Qwen2-VL and Qwen2.5-VL put all its
# tokens in one run of <|video_pad|>; the Qwen3-VL-based families put each grid step (two
# frames) after its own timestamp text, and the kept tokens fill the steps' runs (split
# evenly) in order.
VIDEO_FRAMES, VIDEO_SIZE = 4, (224, 168)  # Qwen2/2.5: 2 grid steps of 6 x 8 merged cells, 96 tokens
FPS = 2.0  # Qwen2.5-VL: 1 s per grid step of 2 frames, 2 positions per second (tokens_per_second)


def video_meta(frames: int) -> dict:
    return {
        "total_num_frames": frames,
        "fps": FPS,
        "duration": frames / FPS,
        "frames_indices": list(range(frames)),
        "video_backend": "opencv",
        "do_sample_frames": False,
    }


def fresh_video(frames: int = VIDEO_FRAMES) -> np.ndarray:
    """Frames never sent before, (frames, height, width, 3) uint8."""
    return np.stack([np.asarray(make_image(*VIDEO_SIZE, harness.fresh_seed())) for _ in range(frames)])


def video_prompt(with_image: bool, question: str = QUESTION) -> str:
    media = "<|vision_start|><|image_pad|><|vision_end|>" if with_image else ""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{media}<|vision_start|><|video_pad|><|vision_end|>{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def ask_video(llm, video, image=None, question=QUESTION, max_tokens=3, **knobs):
    """One request with a video (after an image, if given); clears zspa_vllm.worker.selection_log."""
    selection_log.clear()
    data = {"video": (video, video_meta(len(video)))}
    if image is not None:
        data["image"] = make_image(*image)
    prompt = {"prompt": video_prompt(image is not None, question), "multi_modal_data": data, "mm_processor_kwargs": knobs or None}
    return llm.generate(prompt, sampling(max_tokens), use_tqdm=False)[0]


def video_runs(token_ids) -> list[int]:
    """Lengths of the runs of video tokens (one per grid step in Qwen3-VL's layout)."""
    return [length for _, length in image_runs([IMAGE if t == VIDEO else (-1 if t == IMAGE else t) for t in token_ids])]


@pytest.mark.parametrize("with_image", [False, True], ids=["video", "image+video"])
def test_video_token_counts(engines, with_image):
    """A video is pruned to num_kept(n, keep_rate) over all its frames' tokens, next to an
    image with its own budget; keep_rate 1 and prune_method "none" keep it whole; every
    timestamp stays."""
    llm = engines.get("main")
    video, image = fresh_video(), fresh(336, 336) if with_image else None
    full = ask_video(llm, video, image)
    n = list(full.prompt_token_ids).count(VIDEO)
    # what the usage report counts: vLLM's own count from the frames of the parsed item
    processor = llm.renderer.get_mm_processor()
    items = processor.info.get_data_parser().parse_mm_data({"video": (video, video_meta(VIDEO_FRAMES))})
    assert processor._zspa_token_counts(items, {}, "video") == [n]
    if not engines.family.startswith("qwen3"):
        assert n == (VIDEO_SIZE[0] // 28) * (VIDEO_SIZE[1] // 28) * (VIDEO_FRAMES // 2) == 96  # no resize at this size
    for knobs in ({"keep_rate": 1.0}, {"keep_rate": 0.25, "prune_method": "none"}):
        same_output(ask_video(llm, video, image, **knobs), full, exact=True)
        assert not selection_log.RECENT
    pruned = ask_video(llm, video, image, keep_rate=0.25)
    counts = {token: list(pruned.prompt_token_ids).count(token) for token in (IMAGE, VIDEO)}
    text = [t for t in full.prompt_token_ids if t not in (IMAGE, VIDEO)]
    assert [t for t in pruned.prompt_token_ids if t not in (IMAGE, VIDEO)] == text
    image_selection = [("image", visual_tokens(engines.family, 336, 336), counts[IMAGE])] if with_image else []
    assert counts[IMAGE] == (num_kept(image_selection[0][1], 0.25) if with_image else 0)
    selections = [(s.modality, s.num_visual, len(s.kept)) for s in selection_log.RECENT]
    keep = num_kept(n, 0.25)
    assert counts[VIDEO] == keep
    assert sorted(selections) == sorted([("video", n, keep)] + image_selection)
    steps = video_runs(full.prompt_token_ids)
    runs = video_runs(pruned.prompt_token_ids)
    if engines.family.startswith("qwen3"):  # one run per grid step, the budget split evenly
        assert len(steps) == VIDEO_FRAMES // 2 and sorted(runs, reverse=True) == runs and runs[0] - runs[-1] <= 1
    else:
        assert runs == [keep]
    print(f"[{engines.family}] video {VIDEO_FRAMES}x{VIDEO_SIZE}: n={n} l={keep}, runs {steps} -> {runs}; selections {selections}")


def test_zspa_show_draws_a_videos_selection_frame_by_frame(engines, tmp_path, monkeypatch):
    """zspa-show on a video: one view per grid step (two frames), each lit exactly where
    the engine kept that step's tokens."""
    from PIL import Image

    from tests.engine.show_check import check_show
    from zspa_demo import show

    frames = [Image.fromarray(frame) for frame in fresh_video()]
    check_show(engines.get("main"), engines.family, show.Video(frames, FPS), OTHER_QUESTION, tmp_path, monkeypatch)


def test_video_kept_indices_are_select_tokens(engines):
    """Across frames: select_tokens on vLLM's own (unpruned) video embeddings."""
    from transformers import AutoProcessor

    llm = engines.get("main")
    video = fresh_video()
    ask_video(llm, video, keep_rate=0.25, core_ratio=0.5)
    (selection,) = selection_log.RECENT
    query = llm.get_tokenizer().encode(QUESTION, add_special_tokens=False)
    assert selection.modality == "video" and list(selection.query_ids) == query
    processor = AutoProcessor.from_pretrained(fixture_path(engines.family)).video_processor
    inputs = processor(videos=[video], do_rescale=False, do_normalize=False, do_sample_frames=False, return_tensors="pt")

    def expected(model):
        with torch.no_grad():
            (visual,) = harness.vllm_class_of(model).embed_multimodal(
                model, pixel_values_videos=inputs["pixel_values_videos"].to(torch.uint8), video_grid_thw=inputs["video_grid_thw"]
            )
            embedded = model.get_language_model().embed_input_ids(torch.tensor(query))
            features = main_features(model, visual)
            return visual.shape[0], select_tokens(features, embedded, num_kept(visual.shape[0], 0.25), 0.5).tolist()

    ((num_visual, kept),) = llm.apply_model(expected)
    assert num_visual == selection.num_visual
    assert list(selection.kept) == kept
    frame_size = num_visual // (VIDEO_FRAMES // 2)
    assert {k // frame_size for k in kept} == {0, 1}  # selected across frames


@pytest.mark.parametrize("with_image, frames, rate", [(False, 8, 0.25), (True, 8, 0.1)], ids=["video", "image+video"])
def test_video_positions_match_transformers(engines, hf, with_image, frames, rate):
    """vLLM's pruned run = transformers fed the kept rows at the positions transformers
    itself gives them in the unpruned prompt (Qwen2.5-VL: the t channel scaled by
    seconds per grid step x tokens_per_second); other position rules differ."""
    model, processor = hf
    llm = engines.get("main")
    video, image = fresh_video(frames), fresh(300, 900) if with_image else None
    full = ask_video(llm, video, image)
    out = ask_video(llm, video, image, keep_rate=rate)
    kept = {s.modality: list(s.kept) for s in selection_log.RECENT}
    assert sorted(kept) == (["image", "video"] if with_image else ["video"])

    from transformers.video_utils import VideoMetadata

    meta = VideoMetadata(**{k: v for k, v in video_meta(frames).items() if k != "do_sample_frames"})
    inputs = processor(
        text=[video_prompt(with_image)],
        images=[make_image(*image)] if with_image else None,
        videos=[video],
        video_metadata=[meta],
        do_sample_frames=False,
        return_tensors="pt",
    )
    full_ids = inputs["input_ids"][0]
    assert full_ids.tolist() == list(full.prompt_token_ids)  # transformers' prompt is vLLM's, unpruned
    rope_kwargs = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids") if k in inputs}
    unpruned_positions, _ = model.model.get_rope_index(inputs["input_ids"], **rope_kwargs)
    # each token of the pruned prompt in the unpruned one: text in order, and the j-th
    # kept token of an item at that item's kept[j]-th visual token
    ids = torch.tensor(out.prompt_token_ids)
    visual_at = {token: (full_ids == token).nonzero().squeeze(1).tolist() for token in (IMAGE, VIDEO)}
    kept_at = {IMAGE: iter(kept.get("image", ())), VIDEO: iter(kept["video"])}
    text_at = iter(i for i, t in enumerate(full_ids.tolist()) if t not in (IMAGE, VIDEO))
    picks = [visual_at[t][next(kept_at[t])] if t in (IMAGE, VIDEO) else next(text_at) for t in ids.tolist()]
    assert full_ids[picks].tolist() == ids.tolist()

    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        videos = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        embeds[ids == VIDEO] = videos.pooler_output[0][kept["video"]]
        levels = [[level[0][kept["video"]]] for level in getattr(videos, "deepstack_features", None) or []]
        if with_image:
            images = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            embeds[ids == IMAGE] = images.pooler_output[0][kept["image"]]
            for rows, level in zip(levels, getattr(images, "deepstack_features", None) or []):
                rows.insert(0, level[0][kept["image"]])  # the image comes first in the prompt
        deepstack = [torch.cat(rows) for rows in levels]  # Qwen3-VL: in prompt order
        is_video = (full_ids == VIDEO)[picks]
        rules = {"unpruned": unpruned_positions[:, :, picks]}
        rules["consecutive"] = torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1)
        no_time = rules["unpruned"].clone()  # every kept video token on its first frame's time
        no_time[0, 0, is_video] = no_time[0, 0, is_video].min()
        rules["frames at one time"] = no_time
        if "second_per_grid_ts" in rope_kwargs:  # Qwen2.5-VL: time not scaled to tokens_per_second
            per_step = rope_kwargs["second_per_grid_ts"] / model.config.vision_config.tokens_per_second
            unscaled, _ = model.model.get_rope_index(inputs["input_ids"], **{**rope_kwargs, "second_per_grid_ts": per_step})
            rules["time unscaled"] = unscaled[:, :, picks]

        def diff(rule: str) -> float:
            if not deepstack:
                logits = model(inputs_embeds=embeds[None], position_ids=rules[rule]).logits[0, -1]
            else:
                hidden = model.model.language_model(
                    inputs_embeds=embeds[None],
                    position_ids=rules[rule],
                    visual_pos_masks=((ids == IMAGE) | (ids == VIDEO))[None],
                    deepstack_visual_embeds=deepstack,
                ).last_hidden_state
                logits = model.lm_head(hidden)[0, -1]
            reference = torch.log_softmax(logits.float(), dim=-1)
            return max(abs(float(reference[t]) - lp) for t, lp in step_logprobs(out, 0).items())

        diffs = {rule: diff(rule) for rule in rules}
    print(f"[{engines.family}] {frames}-frame video{' + image' if with_image else ''} keep_rate={rate}: vLLM vs transformers "
          + ", ".join(f"{rule}: {d:.1e}" for rule, d in diffs.items()))
    tol = tolerance(engines.family)
    assert diffs["unpruned"] < tol.hf
    # every other rule lands far beyond the agreement (float32, measured: 5e-7..1e-6 vs
    # 1.6e-3..1.4e-1; 7e-4 with 4 frames: a time offset of a few positions moves random
    # weights' logprobs little). bfloat16 (Qwen3.5): consecutive positions land beyond
    # its noise; moving only the t channel of the kept video tokens (measured 1.3e-2 vs
    # 5.4e-3 noise) is only farther than the right rule (float32 Qwen3-VL covers that code)
    if tol is BFLOAT16:
        assert diffs["consecutive"] > SEPARATION * tol.hf
        assert all(d > diffs["unpruned"] for rule, d in diffs.items() if rule != "unpruned")
    else:
        assert all(d > max(VIDEO_RULE_MIN, SEPARATION * tol.hf) for rule, d in diffs.items() if rule != "unpruned")


def test_a_video_keeps_the_identity_its_family_gives_it(engines):
    """A pruned video carries its query in its hash, so another question re-selects it
    (from the encoder-output cache, without the vision tower)."""
    llm = engines.get("main")
    processor = llm.renderer.get_mm_processor()
    hashes, original = [], processor.apply

    def spy(inputs, timing_ctx):
        result = original(inputs, timing_ctx)
        hashes.append(result["mm_hashes"])
        return result

    processor.apply = spy  # the engine's own processor instance, observed
    try:
        video, image = fresh_video(), fresh(336, 336)
        runs = []
        for question, knobs in ((QUESTION, {}), (QUESTION, {"keep_rate": 0.25}), (OTHER_QUESTION, {"keep_rate": 0.25})):
            before = harness.vision_tower_calls(llm, engines.family)
            ask_video(llm, video, image, question, max_tokens=1, **knobs)
            runs.append(harness.vision_tower_calls(llm, engines.family) - before)
    finally:
        del processor.apply
    stock, first, second = hashes
    assert len({stock["image"][0], first["image"][0], second["image"][0]}) == 3
    assert len({stock["video"][0], first["video"][0], second["video"][0]}) == 3
    # stock: image + video; pruned: both under new identities, encoded once more (the
    # stock run does not fill the encoder-output cache); another question: neither
    assert runs == [2, 2, 0]


# --------------------------------------------------------------------------- encoder budget
def test_many_images_in_flight_do_not_over_pack_the_encoder(engines):
    llm = engines.get("many-images")
    n = visual_tokens(engines.family, 336, 336)
    sent = []

    def run():
        images = [fresh(336, 336) for _ in range(12)]
        conversations = [request_messages({"images": [im], "question": QUESTION, "system": SYSTEM}) for im in images]
        outs = llm.chat(conversations, sampling(1), mm_processor_kwargs={"keep_rate": 0.1}, use_tqdm=False)
        assert [[length for _, length in image_runs(o.prompt_token_ids)] for o in outs] == [[num_kept(n, 0.1)]] * 12
        sent.append(images)

    harness.check_encoder_steps_fit_the_budget(engines.family, llm, run, 12, n)
    # the last run (vLLM's charging) encoded several images per call in the model's
    # groups, which changes nothing: each image's kept set is what it gets encoded alone
    selections = sorted(s.kept for s in selection_log.RECENT)
    assert selections == sorted(_kept_when_encoded_alone(llm, engines.family, sent[-1], 0.1))


def _kept_when_encoded_alone(llm, family, images, keep_rate, method="zspa", core_ratio=0.2) -> list[tuple[int, ...]]:
    """select_tokens on each image's embeddings from vLLM's own encoder, one image per call."""
    from transformers import AutoProcessor

    image_processor = AutoProcessor.from_pretrained(fixture_path(family)).image_processor
    query = llm.get_tokenizer().encode(QUESTION, add_special_tokens=False)
    inputs = [
        image_processor(images=[make_image(*image)], do_rescale=False, do_normalize=False, return_tensors="pt")
        for image in images
    ]

    def select(model):
        embedded = model.get_language_model().embed_input_ids(torch.tensor(query))
        kept = []
        with torch.no_grad():
            for x in inputs:
                (visual,) = harness.vllm_class_of(model).embed_multimodal(
                    model, pixel_values=x["pixel_values"].to(torch.uint8), image_grid_thw=x["image_grid_thw"]
                )
                keep = num_kept(visual.shape[0], keep_rate)
                kept.append(tuple(select_tokens(main_features(model, visual), embedded, keep, core_ratio, method=method).tolist()))
        return kept

    return llm.apply_model(select)[0]
