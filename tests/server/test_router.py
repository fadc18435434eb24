"""Two zspa-serve replicas (the Qwen2.5-VL test fixture) behind vLLM's router
(``vllm-router``) on loopback: the knobs pass through it, bad ones come back as the
replica's 400, ``consistent_hash`` on a session header keeps a chat on the replica that
holds its cache, each replica's /metrics counts its own share, and the routing benchmark
(benchmarks/router_bench.py) runs end to end on them."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.families import FAMILIES, fixture_path, visual_tokens
from zspa_vllm.core.selection import num_kept

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import router_bench  # noqa: E402
from tests.fixtures.images import image_url  # noqa: E402

FAMILY = "qwen2.5-vl"
API_KEY = "replica-key"  # the replicas' own; the router passes the client's Authorization header on
AUTH = {"Authorization": f"Bearer {API_KEY}"}
N = visual_tokens(FAMILY, *router_bench.IMAGE_SIZE)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    replicas = router_bench.start_replicas(str(fixture_path(FAMILY)), 2, 32, tmp_path_factory.mktemp("replicas"),
                                           ("--api-key", API_KEY))
    yield replicas
    for replica in replicas:
        replica.stop()


@pytest.fixture(scope="module")
def router(replicas, tmp_path_factory):
    router = router_bench.start_router("consistent_hash", [r.base_url for r in replicas],
                                       tmp_path_factory.mktemp("router") / "router.log")
    yield router
    router.stop()


def chat(router, messages, session: str | None = None, **knobs) -> httpx.Response:
    body = {"model": "bench", "messages": messages, "max_tokens": 2, "temperature": 0, **knobs}
    headers = {**AUTH, **({router_bench.SESSION: session} if session else {})}
    return httpx.post(f"{router.base_url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def user(seed: int | None, text: str) -> dict:
    image = [{"type": "image_url", "image_url": {"url": image_url(seed, router_bench.IMAGE_SIZE)}}] if seed is not None else []
    return {"role": "user", "content": [*image, {"type": "text", "text": text}]}


def kept_counted(replica) -> float:
    text = httpx.get(f"{replica.base_url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("zspa_visual_tokens_kept_total{"))


def test_knobs_pass_through_the_router_and_bad_ones_are_400(router, replicas):
    before = [kept_counted(r) for r in replicas]
    kept = 0
    for i, rate in enumerate((0.1, 0.25, 1.0, 0.5)):
        response = chat(router, [user(100 + i, "What is shown?")], session=f"s{i}", keep_rate=rate)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        assert (usage["visual_tokens"], usage["visual_tokens_kept"]) == (N, num_kept(N, rate))
        kept += usage["visual_tokens_kept"]
    # each replica counts what it served; together, everything
    assert sum(kept_counted(r) - b for r, b in zip(replicas, before)) == kept
    response = chat(router, [user(110, "What is shown?")], keep_rate=1.5)
    assert response.status_code == 400 and "keep_rate" in response.json()["error"]["message"]
    unauthenticated = httpx.post(f"{router.base_url}/v1/chat/completions", json={"model": "bench", "messages": []}, timeout=60)
    assert unauthenticated.status_code == 401  # the replica's answer, through the router


def test_consistent_hash_keeps_each_chat_on_its_replica(router):
    """Turn 2 of each of four chats, with its session header, reuses turn 1's blocks;
    without the header, a new chat's first turn finds nothing."""
    for i in range(4):
        session, turn1 = f"chat-{i}", [user(200 + i, "Describe the picture.")]
        first = chat(router, turn1, session, keep_rate=0.25)
        assert first.status_code == 200, first.text
        turn2 = turn1 + [{"role": "assistant", "content": "Shapes."}, user(None, "Which one is largest?")]
        second = chat(router, turn2, session, keep_rate=0.25).json()["usage"]
        assert first.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        assert second["prompt_tokens_details"]["cached_tokens"] >= 64, (i, second)  # the blocks through the image


def test_router_bench_smallest_run(replicas, tmp_path):
    """Every policy and the direct row, one small run each, through the benchmark's own
    code: the table has them all, and a session-pinned chat reuses its cache."""
    image_token = __import__("transformers").AutoTokenizer.from_pretrained(fixture_path(FAMILY)).convert_tokens_to_ids(
        FAMILIES[FAMILY].image_token)

    class Args:
        conversations, turns, images, questions, concurrency, keep_rate, max_tokens = 2, 3, 2, 2, 2, 0.25, 2

    rows = []
    for seed, policy in enumerate((router_bench.DIRECT, *router_bench.POLICIES)):
        run = router_bench.run_policy(policy, replicas, image_token, Args, 90_000 + 10_000 * seed, tmp_path, AUTH)
        assert set(run) == {"chat_later_ttft_ms", "chat_later_cached_share", "chat_image_kv_reused",
                            "questions_later_ttft_ms", "questions_later_cached_share", "busiest_replica_share"}
        assert run["chat_later_ttft_ms"] > 0 and run["questions_later_ttft_ms"] > 0 and 0.5 <= run["busiest_replica_share"] <= 1
        rows.append({"policy": policy, **{key: {"median": v, "min": v, "max": v} for key, v in run.items()}})
        if policy in (router_bench.DIRECT, "consistent_hash"):  # every later turn and question finds its cache
            assert min(run["chat_image_kv_reused"], run["chat_later_cached_share"], run["questions_later_cached_share"]) > 0, (policy, run)
    assert rows[0]["busiest_replica_share"]["median"] == 1.0  # direct: one replica served everything
    table = router_bench.markdown(rows, {"command": "test", "machine": "test", "workload": "test"})
    assert [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[7:]] == [r["policy"] for r in rows]
