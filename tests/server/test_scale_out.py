"""zspa-serve with vLLM's data parallelism: ``--data-parallel-size 2`` on the demo model,
which also starts two API-server processes (vLLM defaults ``--api-server-count`` to the DP
size), so one server covers both. Kept counts, knob validation, /metrics across both API
servers and both engines, each engine's own encoder-output cache, and a chat kept on its
engine with vLLM's ``X-data-parallel-rank`` header."""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import pytest

from tests.server.conftest import API_KEY, chat_body, image_url, start
from zspa_vllm.core.selection import num_kept

pytestmark = pytest.mark.server

N = 144  # the demo model's visual tokens per image
AUTH = {"Authorization": f"Bearer {API_KEY}"}
RANK = "X-data-parallel-rank"  # vLLM's: the DP engine a request goes to


@pytest.fixture(scope="module")
def dp_server(tmp_path_factory):
    # KV blocks of 32 (the CPU backend's smallest): a chat's turn 2 can hit its first blocks
    server = start(tmp_path_factory, "--demo", "--data-parallel-size", "2", "--block-size", "32",
                   "--enable-prompt-tokens-details")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model(dp_server) -> str:
    return httpx.get(f"{dp_server.base_url}/v1/models", headers=AUTH).json()["data"][0]["id"]


def post(server, body, rank: int | None = None) -> httpx.Response:
    headers = {**AUTH, **({RANK: str(rank)} if rank is not None else {})}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def series(server) -> dict[str, float]:
    """Every zspa_ sample of one /metrics scrape, by its name and labels."""
    text = httpx.get(f"{server.base_url}/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(zspa_\S+) (\S+)$", text, re.M)}


def test_two_api_servers_and_two_engines_started(dp_server):
    log = dp_server.log_tail(10**6)
    assert "Defaulting api_server_count to data_parallel_size (2)" in log
    assert set(re.findall(r"\((EngineCore_DP\d|ApiServer_\d) pid=", log)) == {
        "EngineCore_DP0", "EngineCore_DP1", "ApiServer_0", "ApiServer_1"}


def test_kept_counts_and_knob_validation_unchanged(dp_server, model):
    """Concurrent requests (spread over both API servers and both engines) keep what
    their knobs ask for; bad knobs are a 400 naming the field wherever they land."""
    cases = [({"keep_rate": rate, "prune_method": method}, num_kept(N, rate))
             for rate in (0.1, 0.25, 0.5, 1.0) for method in ("zspa", "divprune", "random")]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: post(dp_server, chat_body(model, 500 + i, **cases[i][0])), range(len(cases))))
    for (knobs, kept), response in zip(cases, responses):
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        assert (usage["visual_tokens"], usage["visual_tokens_kept"]) == (N, kept), knobs
    for _ in range(4):  # either API server
        response = post(dp_server, chat_body(model, 600, keep_rate=1.5))
        assert response.status_code == 400 and "keep_rate" in response.json()["error"]["message"]


def test_metrics_count_every_api_server_and_engine(dp_server, model):
    """The visual-token counters sum both API servers (each scrape, whichever answers);
    the encoder-output cache reports per dp_rank, and each engine keeps its own: an image
    is a miss on each engine it first reaches, then a hit on that engine."""
    before = series(dp_server)
    kept = 0
    for i, rate in enumerate((0.25, 0.1, 0.5, 0.25, 0.1, 0.5)):
        response = post(dp_server, chat_body(model, 700 + i, keep_rate=rate))
        kept += response.json()["usage"]["visual_tokens_kept"]
    for _ in range(4):  # every scrape sees every API server's counts
        after = series(dp_server)
        assert after['zspa_visual_tokens_kept_total{method="zspa"}'] - before.get('zspa_visual_tokens_kept_total{method="zspa"}', 0) == kept

    def cache(name: str, rank: int) -> float:
        return series(dp_server).get(f'zspa_encoder_cache_{name}_total{{dp_rank="{rank}",tp_rank="0"}}', 0.0)

    start = {(name, rank): cache(name, rank) for name in ("hits", "misses") for rank in (0, 1)}
    image = 800
    for question, rank in (("Is there a red circle?", 0), ("How many triangles are there?", 1), ("What colour is the square?", 0)):
        assert post(dp_server, chat_body(model, image, question, keep_rate=0.25), rank).status_code == 200
    delta = {key: cache(*key) - value for key, value in start.items()}
    assert delta == {("misses", 0): 1, ("misses", 1): 1, ("hits", 0): 1, ("hits", 1): 0}


def test_a_chat_pinned_to_its_engine_reuses_its_cache(dp_server, model):
    """Turn 2 sent to turn 1's engine (the header) is served from that engine's prefix
    cache; sent to the other engine it is prefilled whole: what losing affinity costs."""
    content = [{"type": "image_url", "image_url": {"url": image_url(900)}}, {"type": "text", "text": "What colour is the square?"}]
    turn1 = [{"role": "user", "content": content}]
    turn2 = turn1 + [{"role": "assistant", "content": "red"}, {"role": "user", "content": "How many triangles are there?"}]

    def usage(messages, rank):
        response = post(dp_server, {"model": model, "messages": messages, "max_tokens": 2, "temperature": 0,
                                    "keep_rate": 0.25}, rank)
        assert response.status_code == 200, response.text
        return response.json()["usage"]

    first = usage(turn1, 1)
    same, other = usage(turn2, 1), usage(turn2, 0)
    assert first["visual_tokens_kept"] == same["visual_tokens_kept"] == other["visual_tokens_kept"] == num_kept(N, 0.25)
    assert same["prompt_tokens"] == other["prompt_tokens"]
    cached_same, cached_other = (u["prompt_tokens_details"]["cached_tokens"] for u in (same, other))
    assert cached_same >= 32 and cached_other == 0, (cached_same, cached_other)
    print(f"\n[dp] turn 2 of {same['prompt_tokens']} prompt tokens: {cached_same} cached on turn 1's engine, "
          f"{cached_other} on the other")
