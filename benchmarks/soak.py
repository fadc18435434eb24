"""A mixed-load soak against a running zspa-serve: fails on any 5xx, hang, wrong kept
count, canary drift or resident-memory growth after warm-up.

Six kinds of client run at once until the time is up: single images with random knobs,
the same streamed, three-turn chats on one image, one image with new questions, hostile
requests (bad knobs, corrupt images, internal URLs: each must be a 400), and streams the
client drops after the first chunk. A greedy canary asks the same question every few
seconds and must answer the same every time.

    python benchmarks/soak.py --seconds 600            # starts zspa-serve --demo itself
    python benchmarks/soak.py --server http://HOST:PORT --api-key KEY --seconds 600

``make soak`` runs the first; ``tests/server/test_soak.py`` a short one in ``make test``.
A few images and knob values repeat (about 110 combinations, each a processor-cache entry
of 1.4 MB on the demo model), so vLLM's own caches fill within the warm-up (the first half)
and what grows after it grows per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

KEEP_RATES = (0.1, 0.25, 0.5, 1.0)
QUESTIONS = ("What color is the big shape?", "How many shapes are there?", "Is there a circle?")
CANARY = {"question": "What color is the big shape?", "keep_rate": 0.25, "max_tokens": 8}
DEFAULT_MAX_GROWTH_MIB = 256
REQUEST_TIMEOUT = 120  # seconds: a request still unanswered by then has hung


def num_kept(total: int, keep_rate: float) -> int:
    from zspa_vllm.core.selection import num_kept as kept

    return kept(total, keep_rate)


def make_image(seed: int, size=(320, 240)) -> str:
    """A data URL of a few random coloured rectangles."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.randrange(size[0] - 40), rng.randrange(size[1] - 40)
        draw.rectangle((x, y, x + rng.randrange(20, 120), y + rng.randrange(20, 100)), fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class Report:
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    canaries: int = 0
    rss_mib: dict[str, float] = field(default_factory=dict)
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (second, MiB) after warm-up
    max_growth_mib: float = DEFAULT_MAX_GROWTH_MIB

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, kind: str, what: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(f"{kind}: {what}")

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 1), "requests": sum(self.counts.values()), "counts": self.counts,
                "canaries": self.canaries, "rss_mib": self.rss_mib, "rss_samples": self.rss_samples, "max_growth_mib": self.max_growth_mib,
                "failures": self.failures, "ok": self.ok}


def server_rss_mib(pid: int) -> float:
    """Resident memory of the server and every process it started (engine, workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class Soak:
    def __init__(self, base_url: str, api_key: str | None, model: str, report: Report, seed: int = 0) -> None:
        self.base_url, self.model, self.report = base_url, model, report
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # each client its own images: two requests in flight with the same new image can
        # hit vLLM's processor-cache race (P0/P1 drift, vllm#46747), which fails a chat
        # request with a 500 in vLLM 0.32-0.34, stock as well: not what this soak measures
        kinds = ("fresh", "streamed", "chat", "same_image", "hostile", "dropped", "canary")
        self.pools = {kind: [make_image(seed * 1000 + 10 * k + i) for i in range(2)] for k, kind in enumerate(kinds)}
        self.rng = random.Random(seed)

    def body(self, content_turns: list, keep_rate: float, max_tokens: int = 2, **extra) -> dict:
        return {"model": self.model, "messages": content_turns, "max_tokens": max_tokens, "temperature": 0,
                "keep_rate": keep_rate, **extra}

    def turn(self, image: str | None, question: str) -> dict:
        content = [{"type": "text", "text": question}]
        if image is not None:
            content.insert(0, {"type": "image_url", "image_url": {"url": image}})
        return {"role": "user", "content": content}

    async def post(self, client, kind: str, body: dict, expect: int = 200):
        self.report.counts[kind] = self.report.counts.get(kind, 0) + 1
        try:
            response = await client.post(f"{self.base_url}/v1/chat/completions", json=body, headers=self.headers, timeout=REQUEST_TIMEOUT)
        except Exception as error:  # noqa: BLE001  (a timeout is a hang; anything else a failure)
            self.report.fail(kind, f"no answer: {error!r}")
            return None
        if response.status_code != expect:
            self.report.fail(kind, f"HTTP {response.status_code} (expected {expect}): {response.text[:200]}")
            return None
        return response

    def check_kept(self, kind: str, usage: dict | None, keep_rate: float) -> None:
        if not usage or "visual_tokens" not in usage:
            self.report.fail(kind, f"no visual token counts in usage {usage}")
            return
        expected = num_kept(usage["visual_tokens"], keep_rate)
        if usage["visual_tokens_kept"] != expected:
            self.report.fail(kind, f"kept {usage['visual_tokens_kept']} of {usage['visual_tokens']} at keep_rate {keep_rate}, expected {expected}")

    # the clients, one coroutine each
    async def fresh(self, client) -> None:
        rate = self.rng.choice(KEEP_RATES)
        response = await self.post(client, "fresh", self.body([self.turn(self.rng.choice(self.pools["fresh"]), self.rng.choice(QUESTIONS))], rate))
        if response is not None:
            self.check_kept("fresh", response.json().get("usage"), rate)

    async def stream(self, client, kind: str, body: dict, first_chunk_only: bool = False) -> tuple[bool, dict | None]:
        """A streamed request: (answered, the usage its chunks carried); a failure is reported."""
        self.report.counts[kind] = self.report.counts.get(kind, 0) + 1
        usage = None
        try:
            async with client.stream("POST", f"{self.base_url}/v1/chat/completions", json=body, headers=self.headers, timeout=REQUEST_TIMEOUT) as response:
                if response.status_code != 200:
                    self.report.fail(kind, f"HTTP {response.status_code}")
                    return False, None
                async for line in response.aiter_lines():
                    if first_chunk_only:
                        return True, None  # the client goes away after the first chunk
                    if line.startswith("data: {") and '"usage"' in line:
                        usage = json.loads(line[len("data: "):]).get("usage") or usage
        except Exception as error:  # noqa: BLE001
            self.report.fail(kind, f"no answer: {error!r}")
            return False, None
        return True, usage

    async def streamed(self, client) -> None:
        rate = self.rng.choice(KEEP_RATES)
        body = self.body([self.turn(self.rng.choice(self.pools["streamed"]), self.rng.choice(QUESTIONS))], rate,
                         stream=True, stream_options={"include_usage": True})
        answered, usage = await self.stream(client, "streamed", body)
        if answered:
            self.check_kept("streamed", usage, rate)

    async def chat(self, client) -> None:
        image, rate, messages = self.rng.choice(self.pools["chat"]), self.rng.choice(KEEP_RATES), []
        for turn, question in enumerate(QUESTIONS):
            messages.append(self.turn(image if turn == 0 else None, question))
            response = await self.post(client, "chat", self.body(messages, rate))
            if response is None:
                return
            reply = response.json()
            self.check_kept("chat", reply.get("usage"), rate)
            messages.append({"role": "assistant", "content": reply["choices"][0]["message"]["content"] or "."})

    async def same_image(self, client) -> None:
        rate = 0.25
        response = await self.post(client, "same_image", self.body([self.turn(self.pools["same_image"][0], self.rng.choice(QUESTIONS))], rate))
        if response is not None:
            self.check_kept("same_image", response.json().get("usage"), rate)

    async def hostile(self, client) -> None:
        good = self.pools["hostile"][0]
        truncated = good[: len(good) // 2]
        cases = [
            self.body([self.turn(good, "What is it?")], 7),  # keep_rate out of range
            self.body([self.turn(truncated, "What is it?")], 0.5),
            self.body([self.turn("http://127.0.0.1:9/internal.png", "What is it?")], 0.5),
            self.body([self.turn("data:image/png;base64,bm90IGFuIGltYWdl", "What is it?")], 0.5),
        ]
        await self.post(client, "hostile", self.rng.choice(cases), expect=400)
        await asyncio.sleep(0.05)  # answered in a millisecond: do not crowd out the others

    async def dropped(self, client) -> None:
        body = self.body([self.turn(self.rng.choice(self.pools["dropped"]), self.rng.choice(QUESTIONS))], self.rng.choice(KEEP_RATES),
                         max_tokens=16, stream=True)
        await self.stream(client, "dropped", body, first_chunk_only=True)

    async def canary(self, client) -> str | None:
        body = self.body([self.turn(self.pools["canary"][0], CANARY["question"])], CANARY["keep_rate"], max_tokens=CANARY["max_tokens"])
        response = await self.post(client, "canary", body)
        if response is None:
            return None
        reply = response.json()
        return json.dumps([reply["choices"][0]["message"]["content"], reply["usage"]["visual_tokens_kept"]])


async def run(base_url: str, api_key: str | None, seconds: float, *, pid: int | None = None, model: str | None = None,
              canary_every: float = 5.0, warmup: float = 0.5, max_growth_mib: float = DEFAULT_MAX_GROWTH_MIB, seed: int = 0,
              progress=None) -> Report:
    """Run the soak for ``seconds``; resident memory (of process ``pid`` and its children)
    may grow at most ``max_growth_mib`` between the end of the warm-up (``warmup`` of the
    time) and the end."""
    import httpx

    report = Report(max_growth_mib=max_growth_mib)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32)) as client:
        if model is None:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            model = (await client.get(f"{base_url}/v1/models", headers=headers)).json()["data"][0]["id"]
        soak = Soak(base_url, api_key, model, report, seed)
        start = time.monotonic()
        deadline = start + seconds

        async def loop(client_fn):
            while time.monotonic() < deadline:
                await client_fn(client)

        async def canaries():
            first = None
            while time.monotonic() < deadline:
                answer = await soak.canary(client)
                report.canaries += 1
                if first is None:
                    first = answer
                elif answer != first:
                    report.fail("canary", f"answered {answer}, first {first}")
                await asyncio.sleep(canary_every)

        async def memory():
            await asyncio.sleep(seconds * warmup)
            if pid is not None:
                report.rss_mib["after_warmup"] = round(server_rss_mib(pid), 1)
            while time.monotonic() < deadline:
                if progress:
                    progress(time.monotonic() - start, seconds, sum(report.counts.values()))
                if pid is not None:
                    report.rss_samples.append((round(time.monotonic() - start), round(server_rss_mib(pid))))
                await asyncio.sleep(min(10.0, max(deadline - time.monotonic(), 0.1)))

        clients = [soak.fresh, soak.streamed, soak.chat, soak.same_image, soak.hostile, soak.dropped]
        await asyncio.gather(*(loop(c) for c in clients), canaries(), memory())
        report.seconds = time.monotonic() - start
    if pid is not None:
        report.rss_mib["end"] = round(server_rss_mib(pid), 1)
        growth = report.rss_mib["end"] - report.rss_mib["after_warmup"]
        report.rss_mib["growth"] = round(growth, 1)
        if growth > max_growth_mib:
            report.fail("memory", f"resident memory grew {growth:.0f} MiB after warm-up (bound {max_growth_mib} MiB)")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="base URL of a running zspa-serve (default: start zspa-serve --demo)")
    parser.add_argument("--api-key")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--max-growth-mib", type=float, default=DEFAULT_MAX_GROWTH_MIB)
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)

    def progress(elapsed, total, requests):
        print(f"\rsoak: {elapsed:5.0f}/{total:.0f} s, {requests} requests", end="", file=sys.stderr, flush=True)

    server = None
    if args.server is None:
        import tempfile

        from zspa_serve.launch import ServerProcess

        log = Path(tempfile.mkdtemp(prefix="zspa-soak-")) / "server.log"
        server = ServerProcess(["--demo"], log)
        print(f"soak: starting zspa-serve --demo (log: {log})", file=sys.stderr)
        server.wait_healthy()
    try:
        base_url = args.server or server.base_url
        report = asyncio.run(run(base_url, args.api_key, args.seconds, pid=server.proc.pid if server else None,
                                 max_growth_mib=args.max_growth_mib, progress=progress))
    finally:
        if server is not None:
            server.stop()
    print(file=sys.stderr)
    text = json.dumps(report.as_dict(), indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
