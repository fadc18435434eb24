"""Replicas behind vLLM's router: which routing policy keeps pruned images' caches warm.

N zspa-serve replicas of one model (each its own engine, prefix cache, encoder-output
cache and ``query_scope: first`` memory) on loopback behind ``vllm-router`` (PyPI
``vllm-router``), started once; the router is restarted per policy, the workloads of
``chat_workloads.py`` run through it with fresh images each run:

- **multi-turn chat**: conversations of TURNS turns, the image in turn 1; every turn
  carries its conversation's ``X-Session-ID`` (what ``consistent_hash`` hashes);
- **same image, many questions**: separate requests with ``query_scope: "first"`` (the
  setting that can reuse the image's KV across them), the image's id as session.

Per policy: later turns' (questions') TTFT, the share of their prompt tokens served from
the prefix cache, how many later chat turns reused the whole image's KV, and how the
requests spread over the replicas; first, the same workloads sent straight to one replica
(the ceiling: every request finds its caches). Values are medians (min-max) over the
repeats.

    python benchmarks/router_bench.py --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import chat_workloads  # noqa: E402
from tests.families import FAMILIES, fixture_path  # noqa: E402
from tests.fixtures.images import image_url  # noqa: E402
from zspa_serve.launch import ServerProcess, free_port  # noqa: E402

POLICIES = ("round_robin", "cache_aware", "consistent_hash")
DIRECT = "one replica, no router"  # the ceiling: every request reaches the replica holding its caches
SESSION = "X-Session-ID"  # the header consistent_hash reads first
REPLICA_ARGS = ["--enforce-eager", "--max-model-len", "4096", *chat_workloads.SERVER_ARGS]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
IMAGE_SIZE = (448, 336)


def start_router(policy: str, worker_urls: list[str], log_path: Path) -> ServerProcess:
    """``vllm-router --policy POLICY --worker-urls ...`` on 127.0.0.1, healthy."""
    router = ServerProcess(["--policy", policy, "--worker-urls", *worker_urls, "--prometheus-port", str(free_port()),
                            "--log-level", "warning"], log_path, program=[str(Path(sys.executable).parent / "vllm-router")])
    try:
        router.wait_healthy(timeout=120)
    except Exception:
        router.stop()
        raise
    return router


def start_replicas(model: str, count: int, block_size: int, workdir: Path, extra: tuple[str, ...] = ()) -> list[ServerProcess]:
    """``count`` zspa-serve replicas of ``model`` (``extra``: more zspa-serve arguments),
    started together, healthy."""
    replicas = [ServerProcess([model, "--served-model-name", "bench", "--block-size", str(block_size), *REPLICA_ARGS, *extra],
                              workdir / f"replica{i}.log", env=ENV) for i in range(count)]
    try:
        for replica in replicas:
            replica.wait_healthy(timeout=1200)
    except Exception:
        for replica in replicas:
            replica.stop()
        raise
    return replicas


def requests_served(replica: ServerProcess) -> float:
    """Requests this replica finished (vLLM's own counter)."""
    text = httpx.get(f"{replica.base_url}/metrics", timeout=60).text
    return sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, re.M))


def _later(results: list[list[dict]]) -> list[dict]:
    return [r for one in results for r in one[1:]]


def run_policy(policy: str, replicas: list[ServerProcess], image_token: int, args, seed: int, workdir: Path,
               headers: dict | None = None) -> dict:
    """One run of both workloads through a router with ``policy`` (DIRECT: straight to the
    first replica); fresh images; ``headers`` on every request."""
    router = None if policy == DIRECT else start_router(policy, [r.base_url for r in replicas], workdir / f"router-{policy}-{seed}.log")
    base_url = replicas[0].base_url if router is None else router.base_url
    knobs = {"keep_rate": args.keep_rate}
    try:
        before = [requests_served(r) for r in replicas]
        urls = [image_url(seed + i, IMAGE_SIZE) for i in range(args.conversations)]
        session = {url: {SESSION: f"chat-{seed + i}"} for i, url in enumerate(urls)}

        async def chat_wave(client, wave):
            return await chat_workloads._conversations(client, "bench", wave, knobs, args.turns, args.max_tokens,
                                                       image_token, [session[u] for u in wave])

        chat = asyncio.run(chat_workloads._in_waves(base_url, urls, args.concurrency, chat_wave, headers))
        urls = [image_url(seed + 1000 + i, IMAGE_SIZE) for i in range(args.images)]
        session = {url: {SESSION: f"image-{seed + 1000 + i}"} for i, url in enumerate(urls)}

        async def question_wave(client, wave):
            return await chat_workloads._questions(client, "bench", wave, {**knobs, "query_scope": "first"},
                                                   args.questions, args.max_tokens, [session[u] for u in wave])

        questions = asyncio.run(chat_workloads._in_waves(base_url, urls, args.concurrency, question_wave, headers))
        served = [requests_served(r) - b for r, b in zip(replicas, before)]
    finally:
        if router is not None:
            router.stop()
    later_turns, later_questions = _later(chat), _later(questions)
    return {
        "chat_later_ttft_ms": statistics.median(t["ttft_ms"] for t in later_turns),
        "chat_later_cached_share": sum(t["cached_tokens"] for t in later_turns) / sum(t["prompt_tokens"] for t in later_turns),
        "chat_image_kv_reused": statistics.mean(t["image_prefix_cached"] for t in later_turns),
        "questions_later_ttft_ms": statistics.median(q["ttft_ms"] for q in later_questions),
        "questions_later_cached_share": (sum(q["cached_tokens"] for q in later_questions)
                                         / sum(q["prompt_tokens"] for q in later_questions)),
        "busiest_replica_share": max(served) / sum(served),
    }


def markdown(rows: list[dict], meta: dict) -> str:
    fmt = chat_workloads._fmt
    header = ["policy", "chat turns 2+: TTFT ms", "prompt tokens from prefix cache", "whole image KV reused",
              "later questions: TTFT ms", "prompt tokens from prefix cache", "busiest replica's share of requests"]
    lines = [f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Workloads: {meta['workload']}  ",
             "Values: median (min-max) over the repeats; shares in %. KV is cached in whole blocks, so a turn 2 whose "
             "image ends inside turn 1's last partial block cannot reuse all of it: the direct row is the ceiling.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        pct = {k: {s: 100 * v for s, v in r[k].items()} for k in
               ("chat_later_cached_share", "chat_image_kv_reused", "questions_later_cached_share", "busiest_replica_share")}
        lines.append("| " + " | ".join([
            r["policy"], fmt(r["chat_later_ttft_ms"], 1), fmt(pct["chat_later_cached_share"]), fmt(pct["chat_image_kv_reused"]),
            fmt(r["questions_later_ttft_ms"], 1), fmt(pct["questions_later_cached_share"]), fmt(pct["busiest_replica_share"]),
        ]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="qwen2.5-vl", help="a test fixture (tests/fixtures/models), random weights")
    p.add_argument("--model", help="a real checkpoint instead of the fixture (its family's image token: --family)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}; "
                   "a row with every request sent straight to one replica comes first (--no-direct: not)")
    p.add_argument("--no-direct", action="store_true")
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--questions", type=int, default=6)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--keep-rate", type=float, default=0.25)
    p.add_argument("--max-tokens", type=int, default=2)
    p.add_argument("--block-size", type=int, default=32, help="KV block (the CPU backend's smallest is 32)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="router_bench_cpu")
    args = p.parse_args(argv)
    policies = args.policies.split(",")
    if unknown := [x for x in policies if x not in POLICIES]:
        p.error(f"--policies: unknown {unknown}; choose from {', '.join(POLICIES)}")
    policies = policies if args.no_direct else [DIRECT, *policies]
    model = args.model or str(fixture_path(args.family))
    from transformers import AutoTokenizer

    image_token = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids(FAMILIES[args.family].image_token)
    runs: dict[str, list[dict]] = {policy: [] for policy in policies}
    with tempfile.TemporaryDirectory(prefix="zspa-router-bench-") as tmp:
        started = time.monotonic()
        replicas = start_replicas(model, args.replicas, args.block_size, Path(tmp))
        print(f"{args.replicas} replicas healthy after {time.monotonic() - started:.0f} s", flush=True)
        try:
            seed = 70_000
            for repeat in range(args.repeats):
                for policy in policies:  # interleaved; fresh images every run
                    runs[policy].append(run_policy(policy, replicas, image_token, args, seed, Path(tmp)))
                    seed += 10_000
                    print(f"[{repeat + 1}/{args.repeats}] {policy}: {runs[policy][-1]}", flush=True)
        finally:
            for replica in replicas:
                replica.stop()
    rows = [{"policy": policy, "runs": runs[policy],
             **{key: chat_workloads._stat([r[key] for r in runs[policy]]) for key in runs[policy][0]}} for policy in policies]
    meta = {
        "command": "python " + " ".join(["benchmarks/router_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "workload": (f"{args.replicas} zspa-serve replicas of {args.model or args.family + ' (test fixture, random weights)'} "
                     f"behind vllm-router; multi-turn: {args.conversations} conversations of {args.turns} turns, "
                     f"{args.concurrency} at a time in lockstep, a new {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} image in turn 1; "
                     f"same image: {args.images} images x {args.questions} questions with query_scope first; "
                     f"keep_rate {args.keep_rate:g}, {args.max_tokens} output tokens, KV block {args.block_size}; "
                     f"{args.repeats} repeats"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, meta)
    (args.out / f"{args.name}.md").write_text(table)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
