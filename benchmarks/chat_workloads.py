"""Chat workloads of the serving benchmark (``serve_bench.py --workload chat``).

- **Multi-turn**: conversations of TURNS turns, the image in turn 1, text follow-ups;
  CONCURRENCY conversations in lockstep (turn k sent to all of them at once, after every
  answer of turn k-1), so each turn's TTFT measures that turn's work only.
- **Same image, many questions**: each image asked QUESTIONS questions in separate
  requests, question q about CONCURRENCY images at once after all answers to q-1; TTFT
  of the first and of the later questions.

Settings, side by side on one engine configuration: stock vLLM; zspa-serve at one keep
rate with the default ``image_turn`` query and with ``last_turn``; and the previous
release's behaviour (``last_turn`` with the encoder-output cache off, a server started
with ``ZSPA_ENCODER_CACHE_MIB=0``). Every server runs with prefix caching and
``--enable-prompt-tokens-details``, so each response says how many prompt tokens came
from the prefix cache, and with ``--enable-logging-iteration-details``, so the log says
how many encoder inputs vLLM's scheduler sent to the model in each step (what stock
vLLM's vision encoder runs on). zspa-serve's model may still skip the vision encoder for
such an input (its encoder-output cache): its vision-encoder runs are read from its
``/metrics`` (``zspa_encoder_cache_misses_total``). Stock vLLM exports no such count:
its runs are counted in its engine process by ``server_probes/encoder_runs.py``
(``stock_probe_env``), which wraps vLLM's model runner there.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import time
from pathlib import Path

import httpx

QUESTIONS = [
    "Describe the objects in this picture and their colors.",
    "Which object is the largest?",
    "How many objects are on the left half?",
    "Is anything touching the border of the picture?",
    "What colour is the background?",
    "Which two objects are closest to each other?",
    "Is there a red circle?",
    "What is in the bottom right corner?",
]

# (label, server, knobs) of each workload; keep rate filled in by rows()
CHAT_ROWS = [
    ("stock vLLM", "stock", {}),
    ("zspa image_turn (default)", "zspa", {"query_scope": "image_turn"}),
    ("zspa last_turn", "zspa", {"query_scope": "last_turn"}),
    ("previous release: last_turn, no encoder cache", "zspa-nocache", {"query_scope": "last_turn"}),
]
QUESTION_ROWS = [
    ("stock vLLM", "stock", {}),
    ("zspa (encoder cache on)", "zspa", {}),
    ("zspa query_scope first", "zspa", {"query_scope": "first"}),  # the first question's selection, kept
    ("zspa divprune", "zspa", {"prune_method": "divprune"}),  # question-agnostic
    ("zspa core_ratio 0", "zspa", {"core_ratio": 0}),  # the question picks only the first token
    ("previous release: no encoder cache", "zspa-nocache", {}),
]
SERVERS = {"stock": {}, "zspa": {}, "zspa-nocache": {"ZSPA_ENCODER_CACHE_MIB": "0"}}
SERVER_ARGS = ["--enable-prefix-caching", "--enable-prompt-tokens-details", "--enable-logging-iteration-details"]


PROBES = Path(__file__).resolve().parent / "server_probes"


def probe_env(variable: str, directory: Path) -> dict:
    """Environment of a server whose every process runs the probe ``variable`` switches
    on, writing into ``directory`` (see server_probes/sitecustomize.py)."""
    path = os.pathsep.join(p for p in (str(PROBES), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, variable: str(directory)}


def stock_probe_env(directory: Path) -> dict:
    """Environment of a stock server whose vision-encoder runs are counted into
    ``directory`` (server_probes/encoder_runs.py)."""
    return probe_env("ZSPA_BENCH_ENCODER_RUNS", directory)


def rows(keep_rate: float) -> tuple[list, list]:
    def with_rate(table):
        return [(label, server, {**knobs, "keep_rate": keep_rate} if server != "stock" else {}) for label, server, knobs in table]

    return with_rate(CHAT_ROWS), with_rate(QUESTION_ROWS)


# --------------------------------------------------------------------------- requests
async def stream_chat(client, body: dict, arrivals: list[float] | None = None,
                      headers: dict | None = None) -> tuple[float, dict, list[int] | None, str]:
    """POST a streamed chat completion: (seconds to the first token, usage, the prompt's
    token ids if asked for with return_token_ids, the answer's text). ``arrivals``, if
    given, gets the time (perf_counter) of every chunk that carries a generated token;
    ``headers`` go with the request (a router's session header, say)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    start, ttft, usage, prompt_ids, text = time.perf_counter(), None, None, None, []
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {await response.aread()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:  # the server failed after the response started
                raise RuntimeError(f"stream error: {chunk['error']}")
            prompt_ids = chunk.get("prompt_token_ids") or prompt_ids
            for choice in chunk.get("choices") or []:
                if ttft is None:
                    ttft = time.perf_counter() - start
                if arrivals is not None and "role" not in (choice.get("delta") or {}):  # not the role-only opener
                    arrivals.append(time.perf_counter())
                text.append((choice.get("delta") or {}).get("content") or "")
            usage = chunk.get("usage") or usage
    if ttft is None or usage is None:
        raise RuntimeError("the stream ended without tokens or usage")
    return ttft, usage, prompt_ids, "".join(text)


async def _turn(client, model, messages, knobs, max_tokens, headers: dict | None = None) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True, **knobs}
    ttft, usage, prompt_ids, answer = await stream_chat(client, body, headers=headers)
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is None:  # a missing count is not "nothing cached"
        raise RuntimeError(f"the server reported no prompt_tokens_details.cached_tokens (start it with "
                           f"--enable-prompt-tokens-details): usage {usage}")
    return {"ttft_ms": 1000 * ttft, "prompt_tokens": usage["prompt_tokens"], "cached_tokens": details["cached_tokens"],
            "prompt_ids": prompt_ids, "answer": answer}


def _user(image_url: str | None, text: str) -> dict:
    image = [{"type": "image_url", "image_url": {"url": image_url}}] if image_url else []
    return {"role": "user", "content": [*image, {"type": "text", "text": text}]}


async def _conversations(client, model, image_urls, knobs, turns, max_tokens, image_token,
                         headers: list[dict] | None = None) -> list[list[dict]]:
    """Conversations in lockstep: turn k is sent to all of them at once, after every
    answer of turn k-1 arrived, so a turn's TTFT measures that turn's work only.
    ``headers``: per conversation, sent with each of its turns."""
    headers = headers or [None] * len(image_urls)
    histories = [[_user(url, QUESTIONS[0])] for url in image_urls]
    results: list[list[dict]] = [[] for _ in image_urls]
    for k in range(turns):
        if k:
            for history, done in zip(histories, results):
                history += [{"role": "assistant", "content": done[-1]["answer"]}, _user(None, QUESTIONS[k])]
        answers = await asyncio.gather(*(_turn(client, model, h, knobs, max_tokens, x) for h, x in zip(histories, headers)))
        for done, answer in zip(results, answers):
            done.append(answer)
    for turns_of_one in results:
        ids = turns_of_one[0]["prompt_ids"]
        image_end = max(i for i, t in enumerate(ids) if t == image_token) + 1
        for turn in turns_of_one:
            turn["image_prefix_cached"] = turn["cached_tokens"] >= image_end  # every image token's KV reused
            del turn["prompt_ids"], turn["answer"]
    return results


async def _questions(client, model, image_urls, knobs, count, max_tokens, headers: list[dict] | None = None) -> list[list[dict]]:
    """Question q about every image at once, after all answers to question q-1.
    ``headers``: per image, sent with each question about it."""
    headers = headers or [None] * len(image_urls)
    results: list[list[dict]] = [[] for _ in image_urls]
    for question in QUESTIONS[:count]:
        answers = await asyncio.gather(*(_turn(client, model, [_user(url, question)], knobs, max_tokens, x)
                                         for url, x in zip(image_urls, headers)))
        for done, answer in zip(results, answers):
            del answer["prompt_ids"], answer["answer"]
            done.append(answer)
    return results


class EncoderWork:
    """Encoder work a server did during a run: the inputs vLLM's scheduler sent to the
    model (its iteration log) and the vision-encoder runs: zspa-serve's from its /metrics,
    stock vLLM's from the counts its probe wrote into ``probe_dir``.

    vLLM logs a step's iteration line after the step, possibly after the client has its
    answer: ``finish(computed)`` waits until the lines since ``__enter__`` account for
    every prompt token the run's responses say was computed (prompt minus prefix-cached),
    and fails naming the shortfall after ``timeout`` seconds, instead of sleeping."""

    ITERATION = re.compile(r"Iteration\(\d+\): \d+ context requests, (\d+) context tokens")
    ENCODER_INPUTS = re.compile(r"encoder inputs: (\d+)")

    def __init__(self, base_url: str, log_path, timeout: float = 120.0, probe_dir: Path | None = None) -> None:
        self._base_url, self._log_path, self._timeout, self._probe_dir = base_url, log_path, timeout, probe_dir

    def _runs(self) -> float:
        if self._probe_dir is not None:  # stock vLLM: one file per process that ran the encoder
            return sum(json.loads(f.read_text())["runs"] for f in Path(self._probe_dir).glob("*.json"))
        text = httpx.get(f"{self._base_url}/metrics", timeout=60).text
        misses = re.findall(r'^zspa_encoder_cache_misses_total\{dp_rank="\d+",tp_rank="0"\} (\S+)$', text, re.M)
        if not misses:
            raise RuntimeError(f"{self._base_url}/metrics has no zspa_encoder_cache_misses_total: no count of "
                               "vision-encoder runs (a stock server needs probe_dir and stock_probe_env)")
        return sum(float(m) for m in misses)

    def _since_enter(self) -> tuple[int, int]:
        """(context tokens, encoder inputs) of the complete iteration lines logged since
        ``__enter__``."""
        with open(self._log_path, "rb") as log:
            log.seek(self._offset)
            text = log.read().decode(errors="replace")
        context = inputs = 0
        for line in text.splitlines(keepends=True):
            found = self.ITERATION.search(line) if line.endswith("\n") else None
            if found:
                context += int(found.group(1))
                inputs += sum(int(n) for n in self.ENCODER_INPUTS.findall(line))
        return context, inputs

    def __enter__(self):
        self._offset = self._log_path.stat().st_size
        self._runs_before = self._runs()
        return self

    def __exit__(self, *exc) -> None:
        pass

    def finish(self, computed_tokens: int) -> None:
        deadline = time.monotonic() + self._timeout
        while (seen := self._since_enter())[0] < computed_tokens:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server's iteration log shows {seen[0]} of the {computed_tokens} prompt tokens "
                                   f"the responses say were computed, {self._timeout:.0f} s after the run "
                                   "(is it started with --enable-logging-iteration-details?)")
            time.sleep(0.1)
        if seen[0] > computed_tokens:  # lines of another run, or recomputed (preempted) prompts
            raise RuntimeError(f"the server's iteration log shows {seen[0]} prompt tokens computed during the run, "
                               f"the responses {computed_tokens}: the encoder counts cannot be attributed to this run")
        self.scheduled = seen[1]
        self.runs = self._runs() - self._runs_before
        if self._probe_dir is not None and self.scheduled and not self.runs:
            raise RuntimeError(f"vLLM's scheduler sent {self.scheduled} encoder inputs but the stock probe counted no "
                               f"vision-encoder run in {self._probe_dir} (was the server started with stock_probe_env?)")


def _computed(turns) -> int:
    """Prompt tokens the server computed for these answers (not from its prefix cache)."""
    return sum(t["prompt_tokens"] - t["cached_tokens"] for t in turns)


async def _in_waves(base_url, image_urls, concurrency, wave, headers: dict | None = None) -> list:
    """``wave(client, urls)`` over consecutive groups of ``concurrency`` images (``headers``
    on every request: an API key, say)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=3600, headers=headers) as client:
        results = []
        for start in range(0, len(image_urls), concurrency):
            results += await wave(client, image_urls[start : start + concurrency])
        return results


def run_chat(server, model, image_urls, knobs, turns, concurrency, max_tokens, image_token,
             probe_dir: Path | None = None) -> dict:
    async def wave(client, urls):
        return await _conversations(client, model, urls, knobs, turns, max_tokens, image_token)

    with EncoderWork(server.base_url, server.log_path, probe_dir=probe_dir) as work:
        conversations = asyncio.run(_in_waves(server.base_url, image_urls, concurrency, wave))
        work.finish(_computed(t for turns in conversations for t in turns))
    per_turn = list(zip(*conversations))
    return {
        "ttft_ms_by_turn": [statistics.median(t["ttft_ms"] for t in turn) for turn in per_turn],
        "prompt_tokens_by_turn": [statistics.mean(t["prompt_tokens"] for t in turn) for turn in per_turn],
        "cached_tokens_by_turn": [statistics.mean(t["cached_tokens"] for t in turn) for turn in per_turn],
        "image_prefix_cached_later_turns": statistics.mean(t["image_prefix_cached"] for turn in per_turn[1:] for t in turn),
        "encoder_inputs_per_conversation": work.scheduled / len(image_urls),
        "encoder_runs_per_conversation": work.runs / len(image_urls),
    }


def run_questions(server, model, image_urls, knobs, count, concurrency, max_tokens,
                  probe_dir: Path | None = None) -> dict:
    async def wave(client, urls):
        return await _questions(client, model, urls, knobs, count, max_tokens)

    with EncoderWork(server.base_url, server.log_path, probe_dir=probe_dir) as work:
        images = asyncio.run(_in_waves(server.base_url, image_urls, concurrency, wave))
        work.finish(_computed(q for questions in images for q in questions))
    first = [questions[0] for questions in images]
    later = [q for questions in images for q in questions[1:]]
    return {
        "ttft_first_ms": statistics.median(q["ttft_ms"] for q in first),
        "ttft_later_ms": statistics.median(q["ttft_ms"] for q in later),
        "prompt_tokens": statistics.mean(q["prompt_tokens"] for q in later),
        "cached_tokens_later": statistics.mean(q["cached_tokens"] for q in later),
        "encoder_inputs_per_image": work.scheduled / len(image_urls),
        "encoder_runs_per_image": work.runs / len(image_urls),
    }


# --------------------------------------------------------------------------- summaries
def _stat(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(label: str, server: str, knobs: dict, runs: list[dict]) -> dict:
    row = {"setting": label, "server": server, "knobs": knobs, "runs": runs}
    for key, value in runs[0].items():
        if isinstance(value, list):
            row[key] = [_stat([r[key][i] for r in runs]) for i in range(len(value))]
        elif isinstance(value, bool) or value is None:
            row[key] = value
        else:
            row[key] = _stat([r[key] for r in runs])
    return row


def _fmt(stat, digits=0) -> str:
    return "-" if not stat else f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def markdown(chat: list[dict], questions: list[dict], meta: dict) -> str:
    lines = [f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Workloads: {meta['workload']}  ",
             "Values: median (min-max) over the repeats; a run's value is the median over its conversations (images).", ""]
    if chat:
        lines += _chat_table(chat)
    if questions:
        lines += _questions_table(questions)
    return "\n".join(lines) + "\n"


def _chat_table(chat: list[dict]) -> list[str]:
    lines = []
    turns = len(chat[0]["ttft_ms_by_turn"])
    header = ["family", "setting", *[f"TTFT turn {k + 1} ms" for k in range(turns)], "prompt tok (turn 1 / last)",
              "prefix-cached tok (last turn)", "image KV reused, turns 2+", "encoder inputs / conversation",
              "vision-encoder runs / conversation", "turns 2+ TTFT vs stock"]
    lines += ["### Multi-turn chat (image in turn 1)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    stock = {r["family"]: r for r in chat if r["server"] == "stock"}
    for r in chat:
        later = statistics.mean(s["median"] for s in r["ttft_ms_by_turn"][1:])
        base = statistics.mean(s["median"] for s in stock[r["family"]]["ttft_ms_by_turn"][1:])
        lines.append("| " + " | ".join([
            r["family"], r["setting"], *[_fmt(s) for s in r["ttft_ms_by_turn"]],
            f"{r['prompt_tokens_by_turn'][0]['median']:.0f} / {r['prompt_tokens_by_turn'][-1]['median']:.0f}",
            f"{r['cached_tokens_by_turn'][-1]['median']:.0f}", f"{100 * r['image_prefix_cached_later_turns']['median']:.0f}%",
            _fmt(r["encoder_inputs_per_conversation"], 2), _fmt(r["encoder_runs_per_conversation"], 2), f"{later / base:.2f}x",
        ]) + " |")
    return lines + [""]


def _questions_table(questions: list[dict]) -> list[str]:
    lines = []
    header = ["family", "setting", "TTFT first question ms", "TTFT later questions ms", "prompt tok", "prefix-cached tok (later)",
              "encoder inputs / image", "vision-encoder runs / image", "later TTFT vs stock"]
    lines += ["### Same image, many questions (separate requests)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    stock = {r["family"]: r for r in questions if r["server"] == "stock"}
    for r in questions:
        lines.append("| " + " | ".join([
            r["family"], r["setting"], _fmt(r["ttft_first_ms"]), _fmt(r["ttft_later_ms"]), f"{r['prompt_tokens']['median']:.0f}",
            f"{r['cached_tokens_later']['median']:.0f}", _fmt(r["encoder_inputs_per_image"], 2), _fmt(r["encoder_runs_per_image"], 2),
            f"{r['ttft_later_ms']['median'] / stock[r['family']]['ttft_later_ms']['median']:.2f}x",
        ]) + " |")
    return lines


def plot(chat: list[dict], questions: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in chat + questions))
    fig, axes = plt.subplots(len(families), 2, figsize=(12, 3.4 * len(families)), squeeze=False)
    for (ax_chat, ax_q), family in zip(axes, families):
        if not chat:
            ax_chat.set_axis_off()
        for r in (r for r in chat if r["family"] == family):
            med = [s["median"] for s in r["ttft_ms_by_turn"]]
            turns = range(1, len(med) + 1)
            ax_chat.errorbar(turns, med, yerr=[[m - s["min"] for m, s in zip(med, r["ttft_ms_by_turn"])],
                                                [s["max"] - m for m, s in zip(med, r["ttft_ms_by_turn"])]],
                             marker="o", capsize=3, label=r["setting"], color="gray" if r["server"] == "stock" else None)
        if chat:
            ax_chat.set(title=f"{family}: multi-turn chat, TTFT by turn", xlabel="turn", ylabel="ms", xticks=list(turns))
            ax_chat.legend(fontsize=7)
        sub = [r for r in questions if r["family"] == family]
        if not sub:
            ax_q.set_axis_off()
            continue
        x = range(len(sub))
        for offset, key, name in ((-0.2, "ttft_first_ms", "first question"), (0.2, "ttft_later_ms", "later questions")):
            med = [r[key]["median"] for r in sub]
            ax_q.bar([i + offset for i in x], med, width=0.4, label=name,
                     yerr=[[m - r[key]["min"] for m, r in zip(med, sub)], [r[key]["max"] - m for m, r in zip(med, sub)]], capsize=3)
        ax_q.set_xticks(list(x), [r["setting"].replace(" (", "\n(").replace(": ", ":\n") for r in sub], fontsize=7)
        ax_q.set(title=f"{family}: same image, many questions, TTFT", ylabel="ms")
        ax_q.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
