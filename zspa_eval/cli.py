"""``zspa-eval``: run a dataset against an OpenAI-compatible endpoint over a sweep of
keep_rate x core_ratio x prune_method, then score it.

    zspa-eval --base-url http://localhost:8000/v1 --data pope.jsonl \\
        --keep-rates 0.5,0.25,0.1 --core-ratios 0.1,0.2,0.4 --methods zspa,divprune --out runs/pope

Writes OUT/results.jsonl (one line per answer; a rerun resumes from it), OUT/report.md,
OUT/report.json and OUT/accuracy.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

from zspa_eval.dataset import load_rows
from zspa_eval.report import markdown, plot, summarize
from zspa_eval.sweep import Endpoint, cells, read_results, run_sweep


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zspa-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="the endpoint's OpenAI base URL, e.g. http://localhost:8000/v1")
    p.add_argument("--model", help="model name (default: the endpoint's first /v1/models entry)")
    p.add_argument("--api-key", help="bearer token, if the endpoint wants one")
    p.add_argument("--data", required=True, help="a JSONL file, or a Hugging Face dataset name")
    p.add_argument("--split", default="test", help="split of a Hugging Face dataset (default test)")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--keep-rates", type=_floats, default=[0.5, 0.25, 0.1])
    p.add_argument("--core-ratios", type=_floats, default=[0.1, 0.2, 0.4])
    p.add_argument("--methods", type=lambda t: t.split(","), default=["zspa", "divprune"])
    p.add_argument("--asked-second", action="store_true", help="also run every zspa setting with query_scope first, "
                   "each question sent after another row's question about its image: the accuracy of answering with "
                   "the tokens chosen for another question (what query_scope first costs)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--knobs-field", help="send the knobs inside this body field (e.g. mm_processor_kwargs for "
                   "plain vllm serve with the plugin) instead of at the top level as zspa-serve takes them")
    p.add_argument("--bare-questions", action="store_true", help="send each question as it is, without the "
                   "answer-format instruction appended (for a model trained on the bare questions)")
    p.add_argument("--out", required=True, type=Path, help="output folder (results.jsonl is resumed from)")
    p.add_argument("--no-plot", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sweep = cells(args.keep_rates, args.core_ratios, args.methods, args.asked_second)
    except ValueError as error:
        parser().error(str(error))
    rows = load_rows(args.data, split=args.split, limit=args.limit)
    model = args.model or _first_model(args.base_url, args.api_key)
    endpoint = Endpoint(args.base_url.rstrip("/"), model, args.api_key, args.max_tokens, args.knobs_field,
                        instructions=not args.bare_questions)
    results = args.out / "results.jsonl"
    print(f"zspa-eval: {len(rows)} rows x {len(sweep)} settings against {model} at {args.base_url}", file=sys.stderr)
    sent = run_sweep(endpoint, rows, sweep, results, args.concurrency)
    print(f"zspa-eval: {sent} requests sent ({len(rows) * len(sweep) - sent} resumed from {results})", file=sys.stderr)

    wanted = {cell.key for cell in sweep}
    summaries = summarize([r for r in read_results(results) if r["cell"] in wanted])
    report = markdown(summaries)
    (args.out / "report.md").write_text(report)
    (args.out / "report.json").write_text(json.dumps({"model": model, "data": args.data, "cells": summaries}, indent=2))
    if not args.no_plot:
        plot(summaries, args.out / "accuracy.png")
    print(report)
    return 1 if any(s["errors"] for s in summaries) else 0


def _first_model(base_url: str, api_key: str | None) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


if __name__ == "__main__":
    sys.exit(main())
