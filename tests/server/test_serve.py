"""zspa-serve end to end: a real server process, real HTTP, the demo model (LLaVA-1.5
architecture, 144 visual tokens per image)."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from tests.server.conftest import API_KEY, MAX_BODY_BYTES, chat_body, image_url
from zspa_vllm.core.selection import num_kept

pytestmark = pytest.mark.server

N = 144  # the demo model: CLIP 336 with 28-pixel patches
K10, K25, K50 = (num_kept(N, rate) for rate in (0.1, 0.25, 0.5))  # 15, 36, 72
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def post(server, body, path="/v1/chat/completions", **kw) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=AUTH, timeout=120, **kw)


@pytest.fixture(scope="module")
def text_tokens(server, model) -> int:
    """Prompt tokens of the chat request besides the image's."""
    usage = post(server, chat_body(model, 1)).json()["usage"]
    assert usage["visual_tokens"] == usage["visual_tokens_kept"] == N
    return usage["prompt_tokens"] - N


def test_models_endpoint_labels_the_demo(server, model):
    assert model == "zspa-demo-llava-shapes-token-dropout"
    assert "trained ONLY on synthetic scenes of coloured shapes" in server.log_tail(10**6)


def test_openai_client_extra_body(server, model, text_tokens):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY)
    body = chat_body(model, 2)
    full = client.chat.completions.create(model=model, messages=body["messages"], max_tokens=2)
    pruned = client.chat.completions.create(
        model=model, messages=body["messages"], max_tokens=2, extra_body={"keep_rate": 0.1, "core_ratio": 0.2}
    )
    assert full.usage.prompt_tokens == text_tokens + N
    assert pruned.usage.prompt_tokens == text_tokens + num_kept(N, 0.1)
    assert pruned.usage.model_extra == {"visual_tokens": N, "visual_tokens_kept": K10}
    assert full.usage.model_extra == {"visual_tokens": N, "visual_tokens_kept": N}


def test_native_mm_processor_kwargs_and_both_spellings_alike(server, model, text_tokens):
    native = post(server, chat_body(model, 3, mm_processor_kwargs={"keep_rate": 0.25}))
    both = post(server, chat_body(model, 3, keep_rate="0.25", mm_processor_kwargs={"keep_rate": 0.250}))
    for response in (native, both):
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] == text_tokens + K25
        assert response.headers["x-zspa-visual-tokens"] == f"{K25}/{N}"
    assert native.json()["choices"][0]["message"] == both.json()["choices"][0]["message"]


def test_streaming_reports_counts(server, model, text_tokens):
    body = chat_body(model, 4, keep_rate=0.5, stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["x-zspa-visual-tokens"] == f"{K50}/{N}"
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usages = [c["usage"] for c in chunks if c.get("usage")]
    assert usages[-1]["prompt_tokens"] == text_tokens + K50
    assert usages[-1]["visual_tokens"] == N and usages[-1]["visual_tokens_kept"] == K50
    assert usages[-1]["completion_tokens"] == 2 and any(c["choices"] for c in chunks)


def test_api_key_is_enforced(server, model):
    body = chat_body(model, 5, keep_rate=0.25)
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=wrong, timeout=60).status_code == 401
    # auth comes before our checks: a bad knob without a key is still a 401
    bad = chat_body(model, 5, keep_rate="abc")
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=bad, timeout=60).status_code == 401
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # not guarded


BAD_KNOBS = [
    ({"keep_rate": "abc"}, "keep_rate"),
    ({"keep_rate": ""}, "keep_rate"),
    ({"keep_rate": 0}, "keep_rate"),
    ({"keep_rate": 1.5}, "keep_rate"),
    ({"keep_rate": -0.1}, "keep_rate"),
    ({"keep_rate": True}, "keep_rate"),
    ({"keep_rate": [0.5]}, "keep_rate"),
    ({"keep_rate": {"v": 0.5}}, "keep_rate"),
    ({"keep_rate": "NaN"}, "keep_rate"),
    ({"keep_rate": "inf"}, "keep_rate"),
    ({"keep_rate": 1e-12}, "keep_rate"),
    ({"core_ratio": 1.01}, "core_ratio"),
    ({"core_ratio": -1}, "core_ratio"),
    ({"core_ratio": "x"}, "core_ratio"),
    ({"prune_method": "fast"}, "prune_method"),
    ({"prune_method": 3}, "prune_method"),
    ({"query_scope": "everything"}, "query_scope"),
    ({"mm_processor_kwargs": {"query_scope": ["last_turn"]}}, "mm_processor_kwargs.query_scope"),
    ({"mm_processor_kwargs": {"keep_rate": 2}}, "mm_processor_kwargs.keep_rate"),
    ({"mm_processor_kwargs": {"prune_method": None, "core_ratio": "?"}}, "mm_processor_kwargs.core_ratio"),
    ({"mm_processor_kwargs": "keep_rate=0.5"}, "mm_processor_kwargs"),
    ({"keep_rate": 0.25, "mm_processor_kwargs": {"keep_rate": 0.5}}, "keep_rate"),
    # other processor / media kwargs: only with --trust-request-mm-kwargs
    ({"mm_processor_kwargs": {"keep_rate": 0.5, "num_crops": 4}}, "mm_processor_kwargs.num_crops"),
    ({"media_io_kwargs": {"image": {"mode": "RGB"}}}, "media_io_kwargs"),
]


@pytest.mark.parametrize("extra, param", BAD_KNOBS, ids=[json.dumps(e)[:60] for e, _ in BAD_KNOBS])
def test_bad_knobs_are_400_naming_the_field(server, model, extra, param):
    response = post(server, chat_body(model, 6, **extra))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == 400
    assert param.split(".")[-1] in error["message"]


def raw(server, content: bytes, content_type="application/json") -> httpx.Response:
    headers = {**AUTH, "Content-Type": content_type}
    return httpx.post(f"{server.base_url}/v1/chat/completions", content=content, headers=headers, timeout=120)


def test_bad_bodies_are_400_or_413_and_the_server_stays_healthy(server, model, text_tokens):
    cases = {
        "malformed JSON": (raw(server, b'{"model": "x", "messages": ['), 400),
        "not an object": (raw(server, b"[1, 2, 3]"), 400),
        "not UTF-8": (raw(server, b'{"keep_rate": "\xff"}'), 400),
        "NaN literal": (raw(server, json.dumps(chat_body(model, 7)).encode()[:-1] + b', "keep_rate": NaN}'), 400),
        "messages missing": (post(server, {"model": model, "keep_rate": 0.5}), 400),
        "oversized": (raw(server, b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'), 413),
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert set(response.json()["error"]) >= {"message", "type", "code"}, name
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    good = post(server, chat_body(model, 8, keep_rate=0.1))
    assert good.status_code == 200 and good.json()["usage"]["prompt_tokens"] == text_tokens + K10


def test_deeply_nested_json_is_400_on_every_endpoint(server, model, text_tokens):
    """A 5000-deep array (beyond the JSON parser's recursion limit) and one just inside
    it: 400, never 500, on our endpoints and on vLLM's own; the server stays healthy."""
    for depth in (5000, 990):
        nested = "[" * depth + "]" * depth
        for path, field in (("/v1/chat/completions", "messages"), ("/v1/responses", "input"), ("/tokenize", "messages"), ("/v1/completions", "prompt")):
            body = f'{{"model": {json.dumps(model)}, "{field}": {nested}, "keep_rate": 0.5}}'.encode()
            response = httpx.post(f"{server.base_url}{path}", content=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=120)
            assert response.status_code == 400, (depth, path, response.text[:300])
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    good = post(server, chat_body(model, 9, keep_rate=0.25))
    assert good.status_code == 200 and good.json()["usage"]["prompt_tokens"] == text_tokens + K25


def test_tokenize_endpoint_takes_the_knobs(server, model, text_tokens):
    body = chat_body(model, 9, keep_rate=0.25)
    body.pop("max_tokens"), body.pop("temperature")
    response = post(server, body, path="/tokenize")
    assert response.status_code == 200, response.text
    assert response.json()["count"] == text_tokens + K25
    assert post(server, {**body, "keep_rate": 7}, path="/tokenize").json()["error"]["param"] == "keep_rate"


def test_64_concurrent_requests_with_mixed_knobs(server, model, text_tokens):
    settings = [{}, {"keep_rate": 1.0}, {"keep_rate": 0.5}, {"keep_rate": 0.25, "core_ratio": 0.4},
                {"keep_rate": 0.1}, {"keep_rate": 0.1, "prune_method": "divprune"}, {"keep_rate": 0.3, "prune_method": "relevance"},
                {"mm_processor_kwargs": {"keep_rate": 0.75}}]

    async def one(client, i):
        knobs = settings[i % len(settings)]
        response = await client.post("/v1/chat/completions", json=chat_body(model, 1000 + i, **knobs))
        return knobs, response

    async def run_all():
        async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH, timeout=600) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    results = asyncio.run(run_all())
    for knobs, response in results:
        assert response.status_code == 200, response.text
        rate = knobs.get("keep_rate", knobs.get("mm_processor_kwargs", {}).get("keep_rate", 1.0))
        usage = response.json()["usage"]
        assert usage["prompt_tokens"] == text_tokens + num_kept(N, rate), knobs
        assert (usage["visual_tokens"], usage["visual_tokens_kept"]) == (N, num_kept(N, rate))


def test_client_disconnecting_mid_stream_does_not_disturb_later_requests(server, model, text_tokens):
    body = chat_body(model, 10, keep_rate=0.25, stream=True, max_tokens=200, ignore_eos=True)
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up
    for seed in (11, 12):
        response = post(server, chat_body(model, seed, keep_rate=0.25))
        assert response.status_code == 200
        assert response.json()["usage"]["prompt_tokens"] == text_tokens + K25
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def _counter(text: str, name: str, method: str) -> float:
    match = re.search(rf'^{name}_total\{{method="{method}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_visual_tokens_before_and_after(server, model):
    def scrape():
        text = httpx.get(f"{server.base_url}/metrics").text
        return {(name, m): _counter(text, name, m) for name in ("zspa_visual_tokens", "zspa_visual_tokens_kept")
                for m in ("zspa", "divprune", "none")}

    before = scrape()
    assert post(server, chat_body(model, 13, keep_rate=0.25)).status_code == 200
    assert post(server, chat_body(model, 14, keep_rate=0.1, prune_method="divprune")).status_code == 200
    assert post(server, chat_body(model, 15)).status_code == 200
    assert post(server, chat_body(model, 16, keep_rate="oops")).status_code == 400  # counts nothing
    after = scrape()
    delta = {key: after[key] - before[key] for key in after}
    assert delta == {
        ("zspa_visual_tokens", "zspa"): N, ("zspa_visual_tokens_kept", "zspa"): K25,
        ("zspa_visual_tokens", "divprune"): N, ("zspa_visual_tokens_kept", "divprune"): K10,
        ("zspa_visual_tokens", "none"): N, ("zspa_visual_tokens_kept", "none"): N,
    }
    assert "vllm:prompt_tokens" in httpx.get(f"{server.base_url}/metrics").text  # vLLM's own are still there


def scrape_timing(server, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    match = re.search(rf'^zspa_{name}\{{dp_rank="0",tp_rank="0"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_encoder_cache_hits_and_misses(server, model):
    """One image, three questions, then one of them again: the vision encoder runs once
    (a miss), the other two questions are served from the encoder-output cache (hits),
    and the repeat never reaches it (vLLM's own caches answer)."""

    def scrape(name):
        text = httpx.get(f"{server.base_url}/metrics").text
        match = re.search(rf'^zspa_encoder_cache_{name}\{{dp_rank="0",tp_rank="0"\}} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    timings = ("vision_encoder_seconds_total", "vision_encoder_items_total", "selection_seconds_total", "selection_items_total")
    before = {name: scrape(name) for name in ("hits_total", "misses_total")}
    before_timings = {name: scrape_timing(server, name) for name in timings}
    for question in ("What is it?", "Where is the circle?", "Which colour dominates?", "What is it?"):
        assert post(server, chat_body(model, 18, question, keep_rate=0.25)).status_code == 200
    delta = {name: scrape(name) - before[name] for name in before}
    assert delta == {"hits_total": 2, "misses_total": 1}
    # --phase-timings (the session server's): one encoder run, three selections, timed
    spent = {name: scrape_timing(server, name) - before_timings[name] for name in timings}
    assert spent["vision_encoder_items_total"] == 1 and spent["selection_items_total"] == 3
    assert spent["vision_encoder_seconds_total"] > 0 and spent["selection_seconds_total"] > 0
    # an unpruned image is timed in the encoder and not selected on
    assert post(server, chat_body(model, 19, "What is it?")).status_code == 200
    assert scrape_timing(server, "vision_encoder_items_total") - before_timings["vision_encoder_items_total"] == 2
    assert scrape_timing(server, "selection_items_total") - before_timings["selection_items_total"] == 3
    assert scrape("capacity_bytes") == 512 << 20  # the default
    assert 0 < scrape("bytes") <= 512 << 20


def test_query_scope_first_reuses_the_image_across_requests(server, model):
    """Three questions about one image in separate requests with query_scope "first":
    the later two reuse the image's KV from vLLM's prefix cache (its counter of hit
    tokens); the same image asked under image_turn, a new selection, does not. The demo
    template puts a turn's text before its images, so the image goes in a turn of its own
    ahead of the question; the CPU KV block is 128 tokens, so keep_rate 0.9 (130 kept)
    lets the image fill one."""

    def prefix_hits() -> float:
        text = httpx.get(f"{server.base_url}/metrics").text
        return sum(float(v) for v in re.findall(r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)$", text, re.M))

    def ask(question, **knobs):
        body = chat_body(model, 29, question, keep_rate=0.9, **knobs)
        image, text = body["messages"][0]["content"]
        body["messages"] = [{"role": "user", "content": [image]}, {"role": "user", "content": [text]}]
        before = prefix_hits()
        response = post(server, body)
        assert response.status_code == 200 and response.json()["usage"]["visual_tokens_kept"] == num_kept(N, 0.9)
        return prefix_hits() - before

    hits = [ask(question, query_scope="first") for question in ("What is it?", "Where is the circle?", "Which colour?")]
    image_turn = ask("Is it round?")
    assert hits == [0, 128, 128] and image_turn == 0


def test_responses_endpoint_takes_the_knobs_and_reports_counts(server, model):
    content = [{"type": "input_image", "image_url": image_url(17)}, {"type": "input_text", "text": "What is it?"}]
    body = {"model": model, "input": [{"role": "user", "content": content}], "max_output_tokens": 2}
    full = post(server, body, path="/v1/responses")
    pruned = post(server, {**body, "keep_rate": 0.25}, path="/v1/responses")
    assert full.status_code == pruned.status_code == 200, pruned.text
    assert full.json()["usage"]["input_tokens"] - pruned.json()["usage"]["input_tokens"] == N - K25
    assert (pruned.json()["usage"]["visual_tokens"], pruned.json()["usage"]["visual_tokens_kept"]) == (N, K25)
    assert pruned.headers["x-zspa-visual-tokens"] == f"{K25}/{N}"
    assert post(server, {**body, "core_ratio": 3}, path="/v1/responses").json()["error"]["param"] == "core_ratio"
