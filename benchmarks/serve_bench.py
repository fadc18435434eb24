"""Serving benchmark: stock vLLM (plugin off) against zspa-serve at keep_rate 1, 0.5,
0.25 and 0.1, and the ideal (the vision encoder on the full image + the LLM on only the
l(0.1) kept tokens), on one engine configuration, same image-plus-question workload, at
each concurrency of ``--concurrency`` (1,8,32,64 by default), run side by side in one go
and repeated. Per request it reports where the time goes: the vision encoder and the
selection (timed in the workers, ``zspa-serve --phase-timings``), vLLM's own prefill and
decode times; and under load TTFT p50/p95, inter-token latency p50/p99 of the requests
already decoding, and throughput. ``--workload chat`` runs the chat
workloads instead (multi-turn conversations, one image asked many questions; see
benchmarks/chat_workloads.py). ``--workload video`` sends a video of several seconds and
a question, and adds vLLM's own video pruning (EVS, ``--video-pruning-rate``) at the
same share of tokens kept as zspa's keep_rate 0.25.

On a CPU it builds, per family, a random-weight model whose vision encoder and LLM are
the real 7B checkpoint's scaled by one factor in width and depth (``--scale``,
benchmarks/proportional.py); ``--scale 0`` builds the older mid-size model instead (the
tiny fixture's vision tower, a larger LLM: --hidden/--layers). On a GPU pass --model for a
real checkpoint. Also reports prompt tokens per request, peak KV-cache usage and the
concurrency the KV cache admits, as a markdown table, JSON and a PNG under
benchmarks/results/.

    python benchmarks/serve_bench.py --families llava-1.5,qwen2.5-vl --concurrency 1,8,32,64 --repeats 3
    python benchmarks/serve_bench.py --workload chat --repeats 3
    python benchmarks/serve_bench.py --workload video --families qwen2.5-vl --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "benchmarks")]

import chat_workloads  # noqa: E402
import proportional  # noqa: E402
from zspa_serve.launch import ServerProcess  # noqa: E402
from tests.families import FAMILIES, fixture_path  # noqa: E402
from tests.fixtures.images import image_url, make_video, video_mp4  # noqa: E402
from zspa_vllm.core.selection import num_kept  # noqa: E402

KEEP_RATES = [1.0, 0.5, 0.25, 0.1]
QUESTION = "Describe the objects in this picture and their colors."
IMAGE_SIZE = (1024, 768)
# the families the benchmark builds mid-size or proportional models of
MODEL_CLASSES = {family: FAMILIES[family].architecture for family in ("llava-1.5", "llava-next", "qwen2.5-vl", "qwen3-vl")}
# tensor names of the real checkpoints (zspa_selfcheck/fixtures.py)
RENAMES = {"qwen2.5-vl": "_qwen_rename", "qwen3-vl": "_qwen3_rename"}
# the video workload: 8 s at 2 frames/s, a camera panning over one scene
VIDEO_FRAMES, VIDEO_SIZE, VIDEO_FPS = 16, (448, 336), 2.0
VIDEO_QUESTION = "What happens in this video, and which objects move?"
VIDEO_KEEP_RATE = 0.25  # zspa's keep_rate; EVS prunes the rest: --video-pruning-rate 0.75


# --------------------------------------------------------------------------- the model
def build_model(family: str, args, out: Path) -> Path:
    """The benchmark's random-weight model: proportional (``--scale``) or mid-size."""
    if args.scale:
        return proportional.build(family, args.scale, out, MODEL_CLASSES, RENAMES)
    return build_mid_size(family, args.hidden, args.layers, out)


def build_mid_size(family: str, hidden: int, layers: int, out: Path) -> Path:
    """The family's fixture with a larger random-weight LLM (transformers' own init),
    saved in the real checkpoints' layout (zspa_selfcheck/fixtures.py)."""
    from zspa_selfcheck import fixtures as make_fixtures
    import torch
    import transformers

    src = fixture_path(family)
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, out / f.name)
    config = transformers.AutoConfig.from_pretrained(src)
    text = config.text_config
    text.hidden_size, text.num_hidden_layers = hidden, layers
    text.intermediate_size = int(hidden * 2.75) // 64 * 64
    text.num_attention_heads = text.num_key_value_heads = hidden // 64
    if getattr(text, "layer_types", None):  # one entry per layer (Qwen2)
        text.layer_types = [text.layer_types[0]] * layers
    if hasattr(config.vision_config, "out_hidden_size"):  # Qwen: the merger outputs the LLM width
        config.vision_config.out_hidden_size = hidden
    torch.manual_seed(0)
    model = getattr(transformers, MODEL_CLASSES[family])(config).to(torch.float32).eval()
    rename = getattr(make_fixtures, RENAMES.get(family, "_llava_rename"))
    make_fixtures._save_weights(model, out, rename)
    config.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    print(f"[{family}] built {out} ({params / 1e6:.0f}M parameters, LLM {layers}x{hidden})", flush=True)
    return out


# --------------------------------------------------------------------------- one run
def image_part(seed: int, size) -> dict:
    return {"type": "image_url", "image_url": {"url": image_url(seed, size)}}


def video_part(seed: int) -> dict:
    data = video_mp4(make_video(*VIDEO_SIZE, VIDEO_FRAMES, seed), VIDEO_FPS)
    return {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + __import__("base64").b64encode(data).decode()}}


async def _one(client, model, part, question, knobs, max_tokens):
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": [part, {"type": "text", "text": question}]}], **knobs}
    arrivals: list[float] = []
    ttft, usage, _, _ = await chat_workloads.stream_chat(client, body, arrivals)
    return ttft, usage, [b - a for a, b in zip(arrivals, arrivals[1:])]  # gaps while decoding


async def _kv_sampler(client, stop: asyncio.Event, peaks: list[float]):
    while not stop.is_set():
        text = (await client.get("/metrics")).text
        match = re.search(r"^vllm:kv_cache_usage_perc\{[^}]*\} (\S+)$", text, re.M)
        if match:
            peaks.append(float(match.group(1)))
        await asyncio.sleep(0.2)


# per-phase counters in /metrics: the workers' timings (zspa-serve --phase-timings; tensor
# rank 0, whose time every rank spends alike) and vLLM's own per-request histograms
PHASE_COUNTERS = {
    "encoder_s": r'^zspa_vision_encoder_seconds_total\{dp_rank="\d+",tp_rank="0"\} (\S+)$',
    "selection_s": r'^zspa_selection_seconds_total\{dp_rank="\d+",tp_rank="0"\} (\S+)$',
    "prefill_s": r"^vllm:request_prefill_time_seconds_sum\{[^}]*\} (\S+)$",
    "prefill_n": r"^vllm:request_prefill_time_seconds_count\{[^}]*\} (\S+)$",
    "decode_s": r"^vllm:request_decode_time_seconds_sum\{[^}]*\} (\S+)$",
    "decode_n": r"^vllm:request_decode_time_seconds_count\{[^}]*\} (\S+)$",
    "queue_s": r"^vllm:request_queue_time_seconds_sum\{[^}]*\} (\S+)$",
    "queue_n": r"^vllm:request_queue_time_seconds_count\{[^}]*\} (\S+)$",
}


async def _phase_counters(client) -> dict[str, float | None]:
    text = (await client.get("/metrics")).text
    found = {name: re.findall(pattern, text, re.M) for name, pattern in PHASE_COUNTERS.items()}
    return {name: sum(map(float, values)) if values else None for name, values in found.items()}


async def _phases_after(client, before: dict, requests: int) -> dict:
    """Per-request milliseconds of each phase over one run, from the counters' growth.
    vLLM records a request's histograms as it finishes: wait until all are counted."""
    for _ in range(100):
        after = await _phase_counters(client)
        if (after["prefill_n"] or 0) - (before["prefill_n"] or 0) >= requests:
            break
        await asyncio.sleep(0.1)
    else:  # a phase table from a partial count would be wrong, not approximate
        raise RuntimeError(f"vLLM's /metrics counted {after['prefill_n']} - {before['prefill_n']} finished prefills "
                           f"(vllm:request_prefill_time_seconds_count) 10 s after a run of {requests} requests")

    def grew(name):
        return None if after[name] is None or before[name] is None else after[name] - before[name]

    def mean_ms(total, count):
        return None if total is None or not count else 1000 * total / count

    return {
        "encoder_ms": mean_ms(grew("encoder_s"), requests),
        "selection_ms": mean_ms(grew("selection_s"), requests),
        "prefill_ms": mean_ms(grew("prefill_s"), grew("prefill_n")),
        "decode_ms": mean_ms(grew("decode_s"), grew("decode_n")),
        "queue_ms": mean_ms(grew("queue_s"), grew("queue_n")),
    }


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _workload(base_url, model, parts, question, knobs, concurrency, max_tokens):
    """``parts``: one content part (image or video, built beforehand) per request."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=3600) as client:

        async def bounded(part):
            async with limit:
                return await _one(client, model, part, question, knobs, max_tokens)

        before = await _phase_counters(client)
        stop, peaks = asyncio.Event(), []
        sampler = asyncio.create_task(_kv_sampler(client, stop, peaks))
        start = time.perf_counter()
        try:
            results = await asyncio.gather(*(bounded(part) for part in parts))
        finally:
            stop.set()
            await sampler
        wall = time.perf_counter() - start
        phases = await _phases_after(client, before, len(parts))
    ttfts = [t for t, _, _ in results]
    gaps = [gap for _, _, request_gaps in results for gap in request_gaps]
    # before the engine: HTTP, image decoding and preprocessing, IPC (TTFT less vLLM's
    # queue and prefill times, per-request means)
    engine_ms = [phases.get(k) for k in ("queue_ms", "prefill_ms")]
    front_ms = None if None in engine_ms else 1000 * statistics.mean(ttfts) - sum(engine_ms)
    return {
        "front_ms": front_ms,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p95_ms": 1000 * _percentile(ttfts, 0.95),
        "itl_p50_ms": 1000 * _percentile(gaps, 0.5) if gaps else None,
        "itl_p99_ms": 1000 * _percentile(gaps, 0.99) if gaps else None,
        "requests_per_s": len(parts) / wall,
        "output_tokens_per_s": sum(u["completion_tokens"] for _, u, _ in results) / wall,
        "prompt_tokens": statistics.mean(u["prompt_tokens"] for _, u, _ in results),
        "visual_tokens": statistics.mean(u["visual_tokens"] for _, u, _ in results)
        if all("visual_tokens" in u for _, u, _ in results) else None,
        "visual_tokens_kept": statistics.mean(u["visual_tokens_kept"] for _, u, _ in results)
        if all("visual_tokens_kept" in u for _, u, _ in results) else None,
        "kv_cache_peak_pct": 100 * max(peaks) if peaks else None,
        **phases,
    }


def _kv_tokens(log: str) -> int | None:
    match = re.search(r"KV cache size: ([\d,]+) tokens", log)
    return int(match.group(1).replace(",", "")) if match else None


# --------------------------------------------------------------------------- the benchmark
IDEAL = "ideal: encoder(full image) + LLM(l(0.1) tokens)"
UNTIMED = "zspa keep_rate=1, no --phase-timings"


def embeds_part(family: str, width: int, rows: int, seed: int) -> dict:
    """An image given as ``rows`` precomputed embedding rows (random: the model is too):
    stock vLLM then runs no vision encoder and prefills only ``rows`` image tokens."""
    import base64
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(0.02 * torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)), buffer)
    payload = base64.b64encode(buffer.getvalue()).decode()
    if family in RENAMES:  # Qwen: a grid of `rows` merged tokens (2 x 2 patches each)
        payload = {"image_embeds": payload, "image_grid_thw": [1, 2, 2 * rows]}
    return {"type": "image_embeds", "image_embeds": payload}


def start_together(servers: dict, family: str, launches: dict) -> None:
    """Start a server per ``launches`` entry (kind: (arguments, ServerProcess keywords)) at
    once, so their start-ups overlap, into ``servers`` (the caller's ``finally`` stops
    them all, a failed start included); then wait until each answers /health."""
    for kind, (arguments, keywords) in launches.items():
        servers[kind] = ServerProcess(arguments, **keywords)
    start = time.monotonic()
    for kind, server in servers.items():
        server.wait_healthy(timeout=1200)
        print(f"[{family}] {kind} server healthy after {time.monotonic() - start:.0f} s", flush=True)


def bench_family(family: str, args, workdir: Path) -> list[dict]:
    model_path = args.model or str(build_model(family, args, workdir / family))
    concurrencies = args.concurrency
    engine = ["--dtype", args.dtype, "--max-model-len", "8192", "--max-num-seqs", str(max(concurrencies)),
              "--enforce-eager", *args.engine_args.split()]
    name = f"{family}-bench"
    width = json.loads((Path(model_path) / "config.json").read_text())["text_config"]["hidden_size"]
    # vLLM's own process layout (the test suite runs its engines in-process)
    env = {"VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    rows = [("stock vLLM", "stock", {})]
    rows += [(f"zspa keep_rate={r:g}", "zspa", {"keep_rate": r, "core_ratio": 0.2}) for r in KEEP_RATES]
    kinds = [("stock", True, ["--enable-mm-embeds"]), ("zspa", False, ["--phase-timings"])]
    if args.untimed:  # what the workers' own timing costs: the same server without it
        rows.append((UNTIMED, "zspa-untimed", {"keep_rate": 1.0, "core_ratio": 0.2}))
        kinds.append(("zspa-untimed", False, []))
    rows.append((IDEAL, "stock", {}))
    servers = {}
    try:
        start_together(servers, family, {
            kind: ([model_path, "--served-model-name", name, *engine, *extra], dict(log_path=workdir / f"{family}-{kind}.log", env=env, stock=stock))
            for kind, stock, extra in kinds
        })
        probe = asyncio.run(_workload(servers["zspa"].base_url, name, [image_part(9_999, IMAGE_SIZE)], QUESTION,
                                      {"keep_rate": 1}, 1, 1))
        n = round(probe["visual_tokens"])
        ideal_rows = num_kept(n, 0.1)
        print(f"[{family}] {n} visual tokens per image; the ideal row prefills {ideal_rows}", flush=True)
        seed = 10_000
        samples: dict[tuple[int, str], list[dict]] = {(c, label): [] for c in concurrencies for label, *_ in rows}
        runs = [(c, repeat) for c in concurrencies for repeat in range(args.warmup + args.repeats)]
        for c, repeat in tqdm(runs, desc=f"{family} runs", unit="run", disable=None):
            count = max(args.requests, c)  # at least one request per slot
            encoder_ms = None
            for label, kind, knobs in rows:  # interleaved, so drift hits every row alike
                if label == IDEAL:
                    parts = [embeds_part(family, width, ideal_rows, s) for s in range(seed, seed + count)]
                else:
                    parts = [image_part(s, IMAGE_SIZE) for s in range(seed, seed + count)]  # fresh: no cache hits
                seed += count
                result = asyncio.run(_workload(servers[kind].base_url, name, parts, QUESTION, knobs, c, args.max_tokens))
                if kind == "zspa" and knobs.get("keep_rate") == 1.0:
                    encoder_ms = result["encoder_ms"]  # the full image's encoder time, this run
                if label == IDEAL:  # the LLM on l rows was measured; the encoder on the full image is added
                    result = _with_encoder(result, encoder_ms)
                if repeat >= args.warmup:
                    samples[c, label].append(result)
                    tqdm.write(f"[{family}] c={c} repeat {repeat - args.warmup + 1}/{args.repeats} {label}: TTFT p50 "
                               f"{result['ttft_p50_ms']:.0f} ms, ITL p99 {result['itl_p99_ms'] or 0:.0f} ms, "
                               f"{result['requests_per_s'] or 0:.2f} req/s")
        kv_tokens = {kind: _kv_tokens(server.log_tail(10**7)) for kind, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    return [_summary(family, label, kind, knobs, samples[c, label], kv_tokens[kind], args.max_tokens,
                     image=list(IMAGE_SIZE), concurrency=c, visual_tokens_unpruned=n)
            for c in concurrencies for label, kind, knobs in rows]


def _with_encoder(result: dict, encoder_ms: float | None) -> dict:
    """The ideal row: TTFT of the l-row prefill plus the full image's encoder time; its
    throughput is not measured (the stock server ran no encoder for it)."""
    if encoder_ms is None:  # without it the row would silently leave the encoder out
        raise RuntimeError("the ideal row needs the vision encoder's time per request (zspa_vision_encoder_seconds "
                           "in zspa-serve's /metrics with --phase-timings), which did not arrive")
    extra = encoder_ms
    return {**result, "ttft_p50_ms": result["ttft_p50_ms"] + extra, "ttft_p95_ms": result["ttft_p95_ms"] + extra,
            "ttft_llm_only_p50_ms": result["ttft_p50_ms"], "encoder_ms": encoder_ms,
            "requests_per_s": None, "output_tokens_per_s": None}


def _summary(family, label, kind, knobs, runs, kv_tokens, max_tokens, **extra) -> dict:
    """One table row: median, min and max of each metric over the repeats."""
    row = {"family": family, "setting": label, "server": kind, "knobs": knobs, **extra, "runs": runs}
    for metric in runs[0] if runs else ():
        values = [r[metric] for r in runs if r[metric] is not None]
        if 0 < len(values) < len(runs):  # a repeat without it would be dropped from the median unseen
            raise RuntimeError(f"[{family}] {label}: {metric} arrived in {len(values)} of {len(runs)} repeats")
        if values:
            row[metric] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    per_request = row["prompt_tokens"]["median"] + max_tokens if "prompt_tokens" in row else None
    row["kv_admits_concurrency"] = kv_tokens / per_request if kv_tokens and per_request else None
    return row


# --------------------------------------------------------------------------- video workload
def bench_family_video(family: str, args, workdir: Path) -> list[dict]:
    """Stock, zspa at each keep rate, and vLLM's EVS pruning the same share, on one video
    workload. A setting whose server fails (EVS on vLLM 0.32's CPU backend) is reported
    with its error instead of numbers."""
    model_path = args.model or str(build_model(family, args, workdir / family))
    engine = ["--dtype", args.dtype, "--max-model-len", "8192", "--max-num-seqs", str(args.concurrency),
              "--enforce-eager", "--limit-mm-per-prompt", json.dumps({"image": 0, "video": 1}), *args.engine_args.split()]
    name = f"{family}-bench"
    env = {"VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    evs_rate = round(1 - VIDEO_KEEP_RATE, 6)
    rows = [("stock vLLM", "stock", {})]
    rows += [(f"zspa keep_rate={r:g}", "zspa", {"keep_rate": r, "core_ratio": 0.2}) for r in KEEP_RATES]
    rows.append((f"vLLM EVS video_pruning_rate={evs_rate:g}", "evs", {}))
    launch = {"stock": ([], True), "zspa": ([], False), "evs": (["--video-pruning-rate", str(evs_rate)], True)}
    servers, samples, errors = {}, {label: [] for label, *_ in rows}, {}
    try:
        start_together(servers, family, {
            kind: ([model_path, "--served-model-name", name, *engine, *extra], dict(log_path=workdir / f"{family}-video-{kind}.log", env=env, stock=stock))
            for kind, (extra, stock) in launch.items()
        })
        seed = 20_000
        for repeat in range(args.warmup + args.repeats):
            for label, kind, knobs in rows:  # interleaved, so drift hits every row alike
                parts = [video_part(s) for s in range(seed, seed + args.requests)]  # fresh videos: no cache hits
                seed += args.requests
                if label in errors:
                    continue
                try:
                    result = asyncio.run(_workload(servers[kind].base_url, name, parts, VIDEO_QUESTION, knobs,
                                                   args.concurrency, args.max_tokens))
                except Exception as error:  # noqa: BLE001 - reported in the table
                    # the root cause from the server's log, not the engine-died error after it
                    causes = [c for c in re.findall(r"^.*?(\w+Error: .+)$", servers[kind].log_tail(200_000), re.M)
                              if not c.startswith("EngineDeadError")]
                    errors[label] = (causes[-1] if causes else str(error).splitlines()[0])[:160]
                    print(f"[{family}] {label} failed: {errors[label]}", flush=True)
                    continue
                if repeat >= args.warmup:
                    samples[label].append(result)
                    print(f"[{family}] repeat {repeat - args.warmup + 1}/{args.repeats} {label}: TTFT p50 "
                          f"{result['ttft_p50_ms']:.0f} ms, {result['requests_per_s']:.2f} req/s, "
                          f"{result['prompt_tokens']:.0f} prompt tokens", flush=True)
        kv_tokens = {kind: _kv_tokens(server.log_tail(10**7)) for kind, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    return [_summary(family, label, kind, knobs, samples[label], kv_tokens[kind], args.max_tokens,
                     video=[VIDEO_FRAMES, *VIDEO_SIZE], **({"error": errors[label]} if label in errors else {}))
            for label, kind, knobs in rows]


# --------------------------------------------------------------------------- chat workloads
def bench_family_chat(family: str, args, workdir: Path) -> tuple[list[dict], list[dict]]:
    model_path = args.model or str(build_model(family, args, workdir / family))
    config = json.loads((Path(model_path) / "config.json").read_text())
    image_token = config.get("image_token_index", config.get("image_token_id"))
    engine = ["--dtype", args.dtype, "--max-model-len", "8192", "--max-num-seqs", str(args.concurrency),
              "--enforce-eager", *chat_workloads.SERVER_ARGS, "--block-size", str(args.block_size), *args.engine_args.split()]
    name = f"{family}-bench"
    chat_rows, question_rows = chat_workloads.rows(args.chat_keep_rate)
    parts = args.chat_workloads.split(",")
    chat_rows, question_rows = (chat_rows if "chat" in parts else []), (question_rows if "questions" in parts else [])
    servers = {}
    probes = {"stock": workdir / f"{family}-stock-encoder-runs"}  # stock's encoder runs, counted in its engine
    try:
        used = {kind for _, kind, _ in chat_rows + question_rows}
        base_env = {"VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
        start_together(servers, family, {
            kind: ([model_path, "--served-model-name", name, *engine], dict(
                log_path=workdir / f"{family}-chat-{kind}.log", stock=kind == "stock",
                env={**base_env, **extra_env, **(chat_workloads.stock_probe_env(probes[kind]) if kind in probes else {})}))
            for kind, extra_env in chat_workloads.SERVERS.items() if kind in used
        })
        seed = 50_000
        chat_runs = {label: [] for label, *_ in chat_rows}
        question_runs = {label: [] for label, *_ in question_rows}
        for repeat in range(args.warmup + args.repeats):
            for label, kind, knobs in chat_rows:  # interleaved; fresh images every run
                urls = [image_url(s, IMAGE_SIZE) for s in range(seed, seed + args.conversations)]
                seed += args.conversations
                result = chat_workloads.run_chat(servers[kind], name, urls, knobs, args.turns, args.concurrency,
                                                 args.max_tokens, image_token, probes.get(kind))
                if repeat >= args.warmup:
                    chat_runs[label].append(result)
                print(f"[{family}] chat {repeat + 1}/{args.warmup + args.repeats} {label}: TTFT by turn "
                      f"{[round(t) for t in result['ttft_ms_by_turn']]} ms, encoder runs/conversation "
                      f"{result['encoder_runs_per_conversation']:.2f}", flush=True)
            for label, kind, knobs in question_rows:
                urls = [image_url(s, IMAGE_SIZE) for s in range(seed, seed + args.images)]
                seed += args.images
                result = chat_workloads.run_questions(servers[kind], name, urls, knobs, args.questions, args.concurrency,
                                                      args.max_tokens, probes.get(kind))
                if repeat >= args.warmup:
                    question_runs[label].append(result)
                print(f"[{family}] questions {repeat + 1}/{args.warmup + args.repeats} {label}: TTFT first "
                      f"{result['ttft_first_ms']:.0f} ms, later {result['ttft_later_ms']:.0f} ms", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    chat = [{"family": family, **chat_workloads.summarize(label, kind, knobs, chat_runs[label])} for label, kind, knobs in chat_rows]
    questions = [{"family": family, **chat_workloads.summarize(label, kind, knobs, question_runs[label])}
                 for label, kind, knobs in question_rows]
    return chat, questions


def main_chat(args) -> int:
    chat, questions = [], []
    with tempfile.TemporaryDirectory(prefix="zspa-serve-bench-") as tmp:
        for family in args.families.split(","):
            c, q = bench_family_chat(family, args, Path(tmp))
            chat, questions = chat + c, questions + q
    parts = args.chat_workloads.split(",")
    workloads = ([f"multi-turn: {args.conversations} conversations of {args.turns} turns, {args.concurrency} at a time in "
                  f"lockstep, a new {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} image in turn 1, text follow-ups"] if "chat" in parts else []) + (
                 [f"same image: {args.images} images x {args.questions} questions, {args.concurrency} images at a time in "
                  f"lockstep"] if "questions" in parts else [])
    meta = _meta(args, "; ".join(workloads) + f"; keep_rate {args.chat_keep_rate:g}, {args.max_tokens} output tokens, "
                       f"KV block size {args.block_size}")
    args.out.mkdir(parents=True, exist_ok=True)
    table = chat_workloads.markdown(chat, questions, meta)
    stem = f"{args.name}_chat"
    (args.out / f"{stem}.md").write_text(table)
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "chat": chat, "questions": questions}, indent=2))
    chat_workloads.plot(chat, questions, args.out / f"{stem}.png")
    print(table)
    return 0


def _meta(args, workload: str) -> dict:
    model = args.model or (
        f"the real 7B vision encoder and LLM scaled by {args.scale:g} in width and depth, random weights "
        "(benchmarks/proportional.py)" if args.scale else f"random-weight LLM {args.layers}x{args.hidden} on the fixture vision tower")
    return {
        "command": "python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute() else sys.argv[0], *sys.argv[1:]]),
        "machine": f"{platform.node()} {platform.machine()}, {__import__('os').cpu_count()} CPUs, Python {platform.python_version()}",
        "workload": f"{workload}; model: {model}; {args.repeats} repeats after {args.warmup} warm-up",
    }


# --------------------------------------------------------------------------- output
def _fmt(stat, digits=0) -> str:
    if not stat:
        return "-"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Workload: {meta['workload']}  ", "Values: median (min-max) over the repeats.", ""]
    header = ["family", "setting", "TTFT p50 ms", "TTFT p95 ms", "req/s", "out tok/s", "prompt tok/req",
              "peak KV %", "KV admits (req)", "TTFT vs stock", "req/s vs stock"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    stock = {r["family"]: r for r in rows if r["server"] == "stock" and not r["knobs"]}
    for r in rows:
        base = stock[r["family"]]
        if "ttft_p50_ms" not in r:  # the server failed: say why
            lines.append(f"| {r['family']} | {r['setting']} | failed: {r.get('error', 'no result')} |" + " - |" * (len(header) - 3))
            continue
        kv_admits = "-" if r["kv_admits_concurrency"] is None else f"{r['kv_admits_concurrency']:.0f}"
        lines.append("| " + " | ".join([
            r["family"], r["setting"], _fmt(r["ttft_p50_ms"]), _fmt(r["ttft_p95_ms"]), _fmt(r["requests_per_s"], 2),
            _fmt(r["output_tokens_per_s"], 1), _fmt(r["prompt_tokens"]), _fmt(r.get("kv_cache_peak_pct"), 1), kv_admits,
            f"{r['ttft_p50_ms']['median'] / base['ttft_p50_ms']['median']:.2f}x",
            f"{r['requests_per_s']['median'] / base['requests_per_s']['median']:.2f}x",
        ]) + " |")
    return "\n".join(lines) + "\n"


def markdown_load(rows: list[dict], meta: dict) -> str:
    """The single-image workload at each concurrency, with where the time goes."""
    lines = [f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Workload: {meta['workload']}  ",
             "Values: median (min-max) over the repeats; ratios: of the medians (the range of the repeats' own "
             "ratios, each repeat's settings having run in one round). Per request: encoder and selection are timed in the "
             "zspa-serve workers (`--phase-timings`; stock vLLM runs the same encoder on the same images, untimed); "
             "prefill and decode are vLLM's `request_prefill_time` (first scheduled to first token: it includes the "
             "encoder and the selection) and `request_decode_time`; encoder % = encoder / prefill; front-end = mean "
             "TTFT less vLLM's queue and prefill times (HTTP, image decoding and preprocessing, IPC). ITL: gaps between "
             "a request's streamed tokens. The ideal row is stock vLLM given l(0.1) precomputed embedding rows "
             "(no encoder), with the encoder time of the full image (keep_rate=1 row, same run) added to its TTFT; "
             "its throughput is not measured.", ""]
    header = ["family", "conc.", "setting", "TTFT p50 ms", "TTFT p95 ms", "ITL p50 ms", "ITL p99 ms", "req/s",
              "prompt tok", "front-end ms", "encoder ms", "selection ms", "prefill ms", "decode ms", "encoder %",
              "TTFT vs stock", "req/s vs stock", "ITL p99 vs stock", "TTFT vs ideal"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(r["family"], r["concurrency"], r["setting"]): r for r in rows}
    for r in rows:
        if "ttft_p50_ms" not in r:
            continue
        stock = by_key[r["family"], r["concurrency"], "stock vLLM"]
        ideal = by_key.get((r["family"], r["concurrency"], IDEAL))

        def ratio(metric, base):
            """Median over median, and the range of the repeats' own ratios (the settings run
            interleaved, so repeat i of each ran in the same round)."""
            if not base or metric not in r or metric not in base:
                return "-"
            text = f"{r[metric]['median'] / base[metric]['median']:.2f}x"
            pairs = [(a.get(metric), b.get(metric)) for a, b in zip(r["runs"], base["runs"])]
            if len(pairs) > 1 and len(r["runs"]) == len(base["runs"]) and all(a and b for a, b in pairs):
                ratios = [a / b for a, b in pairs]
                text += f" ({min(ratios):.2f}-{max(ratios):.2f})"
            return text

        share = "-"
        if r.get("encoder_ms") and r.get("prefill_ms") and r["setting"] != IDEAL:
            share = f"{r['encoder_ms']['median'] / r['prefill_ms']['median']:.0%}"
        lines.append("| " + " | ".join([
            r["family"], str(r["concurrency"]), r["setting"], _fmt(r["ttft_p50_ms"]), _fmt(r["ttft_p95_ms"]),
            _fmt(r.get("itl_p50_ms"), 1), _fmt(r.get("itl_p99_ms"), 1), _fmt(r.get("requests_per_s"), 2),
            _fmt(r.get("prompt_tokens")), _fmt(r.get("front_ms")), _fmt(r.get("encoder_ms")), _fmt(r.get("selection_ms"), 1),
            "-" if r["setting"] == IDEAL else _fmt(r.get("prefill_ms")), _fmt(r.get("decode_ms")), share,
            ratio("ttft_p50_ms", stock), ratio("requests_per_s", stock), ratio("itl_p99_ms", stock),
            ratio("ttft_p50_ms", ideal) if r["knobs"].get("keep_rate") == 0.1 else "-",
        ]) + " |")
    return "\n".join(lines) + "\n"


def plot_load(rows: list[dict], path: Path) -> None:
    """Per family: TTFT p50, throughput and ITL p99 against concurrency, one line per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in rows))
    panels = (("ttft_p50_ms", "TTFT p50 (ms)"), ("requests_per_s", "requests / s"), ("itl_p99_ms", "ITL p99 (ms)"))
    fig, axes = plt.subplots(len(families), len(panels), figsize=(15, 3.6 * len(families)), squeeze=False)
    for row_axes, family in zip(axes, families):
        settings = list(dict.fromkeys(r["setting"] for r in rows if r["family"] == family))
        for ax, (metric, title) in zip(row_axes, panels):
            for i, setting in enumerate(settings):
                sub = [r for r in rows if r["family"] == family and r["setting"] == setting and metric in r]
                if not sub:
                    continue
                xs = [r["concurrency"] for r in sub]
                med = [r[metric]["median"] for r in sub]
                err = [[m - r[metric]["min"] for m, r in zip(med, sub)], [r[metric]["max"] - m for m, r in zip(med, sub)]]
                style = {"color": "black", "linestyle": "--"} if setting == "stock vLLM" else (
                    {"color": "gray", "linestyle": ":"} if setting == IDEAL else {"color": f"C{i}"})
                label = setting.replace("zspa keep_rate=", "zspa ").replace(IDEAL, "ideal (l(0.1))")
                ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=label, **style)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_title(f"{family}: {title}")
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(len(families), 2, figsize=(11, 3.2 * len(families)), squeeze=False)
    for (ax_ttft, ax_rps), family in zip(axes, families):
        sub = [r for r in rows if r["family"] == family and "ttft_p50_ms" in r]
        labels = [r["setting"].replace("zspa keep_rate=", "zspa ").replace("ideal: unpruned image of ~l(0.1) tokens", "ideal (l)")
                  .replace("vLLM EVS video_pruning_rate=", "EVS ") for r in sub]
        for ax, metric, title in ((ax_ttft, "ttft_p50_ms", "TTFT p50 (ms)"), (ax_rps, "requests_per_s", "requests / s")):
            med = [r[metric]["median"] for r in sub]
            err = [[m - r[metric]["min"] for m, r in zip(med, sub)], [r[metric]["max"] - m for m, r in zip(med, sub)]]
            ax.bar(labels, med, yerr=err, capsize=3, color=["gray"] + ["C0"] * (len(sub) - 1))
            ax.set_title(f"{family}: {title}")
            ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _chat_workloads(text: str) -> str:
    parts = text.split(",")
    if not parts or any(p not in ("chat", "questions") for p in parts):
        raise argparse.ArgumentTypeError(f"expected chat, questions or both comma-separated, got {text!r}")
    return text


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1, got {text!r}")
    return values


# What every server of the benchmark inherits (as the test suite's engines run): offline,
# and vLLM's Model Runner V2 unless the environment names another runner.
SERVER_DEFAULTS = {"VLLM_USE_V2_MODEL_RUNNER": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def main() -> int:
    for name, value in SERVER_DEFAULTS.items():
        os.environ.setdefault(name, value)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="llava-1.5,llava-next,qwen2.5-vl")
    p.add_argument("--model", help="a real checkpoint (one family) instead of the built random-weight model")
    p.add_argument("--scale", type=float, default=0.125,
                   help="the built model: the real 7B vision encoder and LLM scaled by this factor in width and depth "
                        "(benchmarks/proportional.py); 0: the mid-size model instead (--hidden/--layers)")
    p.add_argument("--hidden", type=int, default=512, help="--scale 0: LLM width of the mid-size model")
    p.add_argument("--layers", type=int, default=8, help="--scale 0: LLM depth of the mid-size model")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--requests", type=int, default=16, help="requests per run")
    p.add_argument("--concurrency", type=_int_list, default=None,
                   help="comma-separated concurrencies (default 1,8,32,64 for the single workload; one value, "
                        "default 4, for chat and video)")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="runs per setting discarded first")
    p.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE (CPU KV cache, GiB)")
    p.add_argument("--engine-args", default="", help="more vllm serve options, one string")
    p.add_argument("--untimed", action="store_true",
                   help="single workload: also keep_rate 1 on a zspa-serve without --phase-timings (what the workers' "
                        "timing of the encoder costs)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument("--name", default="serve_bench_cpu", help="output file stem (+ _chat / _video for those workloads)")
    p.add_argument("--workload", choices=("single", "chat", "video"), default="single",
                   help="single: one image + question per request, keep rates swept; chat: multi-turn and "
                        "same-image-many-questions workloads; video: one video + question per request, keep "
                        "rates swept, and vLLM's EVS")
    p.add_argument("--chat-keep-rate", type=float, default=0.25, help="chat workloads: the keep rate")
    p.add_argument("--chat-workloads", type=_chat_workloads, default="chat,questions",
                   help="chat: which of the two workloads to run, comma-separated: chat, questions")
    p.add_argument("--conversations", type=int, default=8, help="chat: conversations per run")
    p.add_argument("--turns", type=int, default=4, help="chat: turns per conversation (the image in turn 1)")
    p.add_argument("--images", type=int, default=4, help="chat: images per run of the same-image workload")
    p.add_argument("--questions", type=int, default=8, help="chat: questions per image (at most 8)")
    p.add_argument("--block-size", type=int, default=32,
                   help="chat: KV block size. Only full blocks are reused from the prefix cache; 32 is the CPU "
                        "backend's smallest (its default is 128), close to the 16 GPUs use")
    args = p.parse_args()
    if not 0 <= args.scale <= 1:
        p.error(f"--scale must be in [0, 1], got {args.scale!r}")
    if args.concurrency is None:
        args.concurrency = [1, 8, 32, 64] if args.workload == "single" else [4]
    elif args.workload != "single":
        if len(args.concurrency) != 1:
            p.error(f"--concurrency: the {args.workload} workload takes one value, got {args.concurrency}")
    if args.workload != "single":
        args.concurrency = args.concurrency[0]
    if args.workload == "chat":
        return main_chat(args)

    rows = []
    bench = bench_family_video if args.workload == "video" else bench_family
    with tempfile.TemporaryDirectory(prefix="zspa-serve-bench-") as tmp:
        for family in args.families.split(","):
            rows += bench(family, args, Path(tmp))
    if args.workload == "video":
        media = (f"one {VIDEO_FRAMES}-frame {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} MPEG-4 video at {VIDEO_FPS:g} frames/s (a new one "
                 f"per request, a panning camera) + a {len(VIDEO_QUESTION.split())}-word question")
    else:
        media = (f"one {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} image (a new one per request) + a {len(QUESTION.split())}-word "
                 "question")
    if args.workload == "video":
        runs = f"{args.requests} requests per run at concurrency {args.concurrency}"
    else:
        runs = f"max({args.requests}, concurrency) requests per run at concurrency {', '.join(map(str, args.concurrency))}"
    meta = _meta(args, f"{runs}, {media}, {args.max_tokens} output tokens (ignore_eos)")
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, meta) if args.workload == "video" else markdown_load(rows, meta)
    stem = args.name + ("_video" if args.workload == "video" else "")
    (args.out / f"{stem}.md").write_text(table)
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (plot if args.workload == "video" else plot_load)(rows, args.out / f"{stem}.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
