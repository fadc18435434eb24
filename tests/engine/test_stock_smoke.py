"""Stock vLLM (plugin disabled) on the tiny fixtures: loads, counts tokens right, listens.

Per fixture, one shared engine answers ``LLM.chat`` with one image and a question:
  - it runs vLLM's own model class (the zspa plugin is not loaded);
  - prompt length = text tokens of the templated prompt + the model's visual token count,
    computed from the model's published formula (and cross-checked with the HF processor);
  - the outputs depend on the image and on the question (logprobs differ), while the same
    request twice gives identical logprobs;
  - vLLM's first-token logprobs match transformers' on the same prompt, proving that both
    load the weights (real hub tensor layout) the same way.
"""

from __future__ import annotations

import os

import pytest

from tests.engine.harness import (
    FAMILIES,
    PLUGIN_ENTRY_POINT,
    SEPARATION,
    STOCK_VLLM_PLUGINS,
    chat_messages,
    fixture_path,
    logprobs_max_diff,
    model_class_of,
    sampling,
    step_logprobs,
    tolerance,
    visual_tokens,
)
from tests.fixtures.images import make_image

pytestmark = pytest.mark.engine

# (width, height): square, landscape, odd, tall, and larger than Qwen's max_pixels.
SIZES = [(336, 336), (1024, 768), (500, 375), (300, 900), (2000, 1500)]
QUESTION = "What is shown in this picture?"
OTHER_QUESTION = "How many red circles are there in the top left corner?"
# Different inputs must move some first-token logprob (full vocabulary) by more than
# this; the same input must reproduce all of them exactly. Observed: image change ~1,
# question change 3e-3 (LLaVA-NeXT) to 4e-2 (Qwen2.5-VL); repeats 0.
DIFF_MIN = 1e-3
# vLLM vs transformers (first generated token, full vocabulary): harness.tolerance;
# observed ~1e-6 in float32, ~5e-3 for Qwen3.5 in bfloat16; a different image moves
# them by ~1.


@pytest.fixture(scope="module", params=[f for f in FAMILIES if not FAMILIES[f].wrapped])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def engine(family, stock_engines):
    llm, _ = stock_engines(family)
    return llm


@pytest.fixture(scope="module")
def tokenizer(family):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fixture_path(family))


@pytest.fixture(scope="module")
def hf_processor(family):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(fixture_path(family))


@pytest.fixture(scope="module")
def hf_model(family):
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(fixture_path(family), dtype=torch.float32)
    assert type(model).__name__ == FAMILIES[family].architecture
    return model.eval()


def _chat(llm, image, question=QUESTION, **kw):
    return llm.chat(chat_messages(image, question, **kw), sampling(), use_tqdm=False)[0]


# --------------------------------------------------------------------------- plugin off
def test_vllm_plugins_filter_excludes_zspa(monkeypatch):
    """VLLM_PLUGINS=STOCK_VLLM_PLUGINS really filters out our entry point, and the entry
    point is installed (so the exclusion is what keeps it out)."""
    import vllm.envs as envs
    from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_plugins_by_group

    if hasattr(envs, "disable_envs_cache"):
        envs.disable_envs_cache()  # read os.environ afresh
    monkeypatch.setenv("VLLM_PLUGINS", PLUGIN_ENTRY_POINT)
    assert PLUGIN_ENTRY_POINT in load_plugins_by_group(DEFAULT_PLUGINS_GROUP)
    monkeypatch.setenv("VLLM_PLUGINS", STOCK_VLLM_PLUGINS)
    assert load_plugins_by_group(DEFAULT_PLUGINS_GROUP) == {}


def test_engine_runs_stock_model_class(family, engine):
    assert os.environ.get("VLLM_PLUGINS") == STOCK_VLLM_PLUGINS
    cls = model_class_of(engine)
    assert cls.__name__ == FAMILIES[family].architecture
    assert cls.__module__.startswith("vllm.model_executor.models."), cls.__module__


# --------------------------------------------------------------------------- token counts
def test_formula_matches_hf_processor(family, hf_processor):
    """The formula in harness.visual_tokens agrees with transformers' processor."""
    fam = FAMILIES[family]
    image_id = hf_processor.tokenizer.convert_tokens_to_ids(fam.image_token)
    prompt = fam.prompt_format.format(q=QUESTION)
    for w, h in SIZES:
        ids = hf_processor(text=[prompt], images=[make_image(w, h, 1)], return_tensors="pt")
        n = int((ids["input_ids"][0] == image_id).sum())
        assert n == visual_tokens(family, w, h), (family, (w, h), n)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_prompt_token_count(family, engine, tokenizer, size):
    fam = FAMILIES[family]
    w, h = size
    out = _chat(engine, make_image(w, h, 1))

    expected_prompt = fam.prompt_format.format(q=QUESTION)
    assert out.prompt == expected_prompt  # the fixture's chat template, as rendered by vLLM
    # LLM.chat tokenizes the rendered prompt with add_special_tokens=False (vLLM
    # entrypoints/common/offline.py: the template is responsible for BOS/EOS).
    text_ids = tokenizer(expected_prompt, add_special_tokens=False)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids(fam.image_token)
    assert text_ids.count(image_id) == 1
    n_visual = visual_tokens(family, w, h)

    assert len(out.prompt_token_ids) == len(text_ids) - 1 + n_visual
    assert list(out.prompt_token_ids).count(image_id) == n_visual
    print(f"[{family}] {w}x{h}: {n_visual} visual + {len(text_ids) - 1} text tokens")


# --------------------------------------------------------------------------- listening
def test_same_request_twice_is_identical(engine):
    a = _chat(engine, make_image(336, 336, 1))
    b = _chat(engine, make_image(336, 336, 1))
    assert a.prompt_token_ids == b.prompt_token_ids
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    assert logprobs_max_diff(a, b, steps=3) == 0.0


def test_different_images_give_different_logprobs(family, engine):
    a = _chat(engine, make_image(336, 336, 1))
    b = _chat(engine, make_image(336, 336, 2))
    assert a.prompt_token_ids == b.prompt_token_ids  # only the pixels differ
    diff = logprobs_max_diff(a, b)
    print(f"[{family}] image change: max |dlogprob| = {diff:.3g}")
    assert diff > DIFF_MIN


def test_different_questions_give_different_logprobs(family, engine):
    image = make_image(336, 336, 1)
    a = _chat(engine, image, QUESTION)
    b = _chat(engine, image, OTHER_QUESTION)
    diff = logprobs_max_diff(a, b)
    print(f"[{family}] question change: max |dlogprob| = {diff:.3g}")
    assert diff > DIFF_MIN


def test_image_url_same_as_image_pil(engine):
    image = make_image(500, 375, 3)
    a = _chat(engine, image)
    b = _chat(engine, image, as_url=True)  # PNG data URL: same pixels
    assert a.prompt_token_ids == b.prompt_token_ids
    assert logprobs_max_diff(a, b, steps=3) == 0.0


# --------------------------------------------------------------------------- vs transformers
@pytest.mark.parametrize("size", [(336, 336), (1024, 768)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_first_token_logprobs_match_transformers(family, engine, hf_processor, hf_model, size):
    import torch

    image = make_image(*size, 4)
    out = _chat(engine, image)

    # vLLM's LLM.chat tokenizes the rendered prompt with add_special_tokens=False.
    kw = dict(return_tensors="pt", add_special_tokens=False)
    inputs = hf_processor(text=[out.prompt], images=[image], **kw)
    assert inputs["input_ids"][0].tolist() == list(out.prompt_token_ids)
    with torch.no_grad():
        logits = hf_model(**inputs).logits[0, -1].float()
    hf = torch.log_softmax(logits, dim=-1)

    vl = step_logprobs(out, 0)
    assert set(vl) == set(range(hf.shape[0]))  # full vocabulary on both sides
    assert int(hf.argmax()) == out.outputs[0].token_ids[0]
    worst = max(abs(float(hf[t]) - lp) for t, lp in vl.items())
    print(f"[{family}] {size}: vLLM vs transformers max |dlogprob| = {worst:.2e}")
    tol = tolerance(family).hf  # Qwen3.5 (hybrid) runs in bfloat16
    assert worst < tol
    # ... and the comparison is sensitive: the other image's logits are far off.
    other = hf_processor(text=[out.prompt], images=[make_image(*size, 5)], **kw)
    with torch.no_grad():
        hf_other = torch.log_softmax(hf_model(**other).logits[0, -1].float(), dim=-1)
    assert max(abs(float(hf_other[t]) - lp) for t, lp in vl.items()) > max(tol, SEPARATION * worst)
