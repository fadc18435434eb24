"""The knob sweep: which settings (cells) run, and running them against an endpoint with
bounded concurrency, a progress bar and a results file that a rerun resumes from."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from zspa_eval.dataset import Row
from zspa_eval.scoring import is_correct
from zspa_vllm.core.params import parse_knobs

INSTRUCTIONS = {
    "yesno": "Answer the question using a single word: yes or no.",
    "mc": "Answer with the option's letter from the given choices directly.",
    "short": "Answer the question using a single word or phrase.",
}


@dataclass(frozen=True, order=True)
class Cell:
    """One knob setting. The unpruned reference is method "none", keep_rate 1."""

    prune_method: str
    keep_rate: float
    core_ratio: float | None  # only zspa uses it
    # query_scope "first", each question sent after another one about its image: its
    # tokens are the ones chosen for that other question
    asked_second: bool = False

    @property
    def key(self) -> str:
        core = "" if self.core_ratio is None else f",core={self.core_ratio:g}"
        return f"{self.prune_method}(keep={self.keep_rate:g}{core}{',first,asked second' if self.asked_second else ''})"

    def knobs(self) -> dict:
        knobs = {"prune_method": self.prune_method, "keep_rate": self.keep_rate}
        if self.asked_second:
            knobs["query_scope"] = "first"
        return knobs if self.core_ratio is None else {**knobs, "core_ratio": self.core_ratio}


UNPRUNED = Cell("none", 1.0, None)


def cells(keep_rates: list[float], core_ratios: list[float], methods: list[str], asked_second: bool = False) -> list[Cell]:
    """The unpruned reference plus every method x keep_rate (x core_ratio for zspa), and
    with ``asked_second`` every zspa cell again asked second; the values are validated
    as the server would."""
    for rate, core, method in itertools.product(keep_rates, core_ratios, methods):
        parse_knobs({"keep_rate": rate, "core_ratio": core, "prune_method": method})
    out = [UNPRUNED]
    for method, rate in itertools.product(methods, keep_rates):
        if method == "none" or rate == 1.0:
            continue  # the reference already keeps everything
        cores = core_ratios if method == "zspa" else [None]
        out += [Cell(method, rate, core) for core in cores]
        if asked_second and method == "zspa":
            out += [Cell(method, rate, core, asked_second=True) for core in cores]
    return sorted(set(out), key=lambda c: (c != UNPRUNED, c.prune_method, -c.keep_rate, c.core_ratio or 0, c.asked_second))


@dataclass
class Endpoint:
    base_url: str  # e.g. http://localhost:8000/v1
    model: str
    api_key: str | None = None
    max_tokens: int = 16
    knobs_field: str | None = None  # None: top level (zspa-serve); else e.g. "mm_processor_kwargs"
    instructions: bool = True  # append the answer-format instruction of the row's type to its question
    timeout: float = 600

    def body(self, row: Row, cell: Cell, question: str | None = None) -> dict:
        """The request for ``row`` under ``cell`` (asking ``question`` instead of the
        row's when given)."""
        question = row.question if question is None else question
        content = [
            {"type": f"{row.media}_url", f"{row.media}_url": {"url": row.media_url}},
            {"type": "text", "text": f"{question}\n{INSTRUCTIONS[row.type]}" if self.instructions else question},
        ]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": 0}
        if cell != UNPRUNED:
            knobs = cell.knobs()
            body.update({self.knobs_field: knobs} if self.knobs_field else knobs)
        return body


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_sweep(endpoint: Endpoint, rows: list[Row], sweep: list[Cell], results: Path, concurrency: int = 8) -> int:
    """Runs every (cell, row) not already answered in ``results`` (failed ones again);
    appends each answer as it arrives. Returns how many requests it sent."""
    done = {(r["cell"], r["id"]) for r in read_results(results) if r.get("error") is None}
    todo = [(cell, row) for cell in sweep for row in rows if (cell.key, row.id) not in done]
    if todo:
        asyncio.run(_run(endpoint, todo, results, concurrency, first_questions(rows)))
    return len(todo)


def first_questions(rows: list[Row]) -> dict[str, str]:
    """For the cells asked second: the question each row's image is asked first, the
    next row's (in a circle) that differs from its own."""
    first = {}
    for i, row in enumerate(rows):
        others = (rows[(i + k) % len(rows)].question for k in range(1, len(rows)))
        first[row.id] = next((q for q in others if q != row.question), None)
    return first


async def _run(endpoint: Endpoint, todo: list[tuple[Cell, Row]], results: Path, concurrency: int,
               first: dict[str, str | None]) -> None:
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    results.parent.mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(base_url=endpoint.base_url, headers=headers, timeout=endpoint.timeout) as client:
        with results.open("a") as out, tqdm(total=len(todo), desc="zspa-eval", unit="req") as bar:

            async def one(cell: Cell, row: Row) -> None:
                async with limit:
                    record = await _ask(client, endpoint, cell, row, first[row.id] if cell.asked_second else None)
                out.write(json.dumps(record) + "\n")
                out.flush()
                bar.update()

            await asyncio.gather(*(one(cell, row) for cell, row in todo))


async def _ask(client: httpx.AsyncClient, endpoint: Endpoint, cell: Cell, row: Row, first: str | None = None) -> dict:
    """The row's answer under ``cell``; for a cell asked second, after asking ``first``
    about the same image (the server then keeps that question's selection)."""
    record = {"cell": cell.key, "knobs": asdict(cell), "id": row.id, "type": row.type, "category": row.category,
              "answer": row.answer}
    try:
        if cell.asked_second:
            if first is None:
                raise ValueError("no other question to ask first: every row asks the same")
            record["asked_first"] = first
            response = await client.post("/chat/completions", json=endpoint.body(row, cell, first))
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code} on the question asked first: {response.text[:500]}")
        response = await client.post("/chat/completions", json=endpoint.body(row, cell))
        payload = response.json()
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {payload.get('error', payload)}")
        prediction = payload["choices"][0]["message"]["content"] or ""
        usage = payload.get("usage") or {}
        return {**record, "prediction": prediction, "correct": is_correct(prediction, row.answer, row.type),
                "prompt_tokens": usage.get("prompt_tokens"), "visual_tokens": usage.get("visual_tokens"),
                "visual_tokens_kept": usage.get("visual_tokens_kept"), "error": None}
    except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as error:
        return {**record, "error": f"{type(error).__name__}: {error}"}
