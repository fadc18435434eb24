"""benchmarks/serve_bench.py end to end at the smallest size (numbers meaningless, the
pipeline and its outputs checked): stock vLLM and zspa-serve side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.harness import mrv2_requested, visual_tokens
from zspa_vllm.core.selection import num_kept

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]


def run_bench(tmp_path, *args: str, timeout: int = 1200, scale: str = "0") -> None:
    """serve_bench.py at the smallest model size (by default the fixture's tower and a
    2x128 LLM; 2 output tokens, no warm-up), writing smoke*.{md,json,png} into ``tmp_path``."""
    command = [sys.executable, str(REPO / "benchmarks" / "serve_bench.py"), *args, "--scale", scale, "--hidden", "128",
               "--layers", "2", "--max-tokens", "2", "--warmup", "0", "--kv-cache-gib", "1", "--out", str(tmp_path),
               "--name", "smoke"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]


def test_serve_bench_smallest_run(tmp_path):
    """A proportional model at the smallest scale, two concurrencies, every setting,
    keep_rate 1 on a server without --phase-timings (--untimed) and the ideal row, with
    the phases recorded where they happen."""
    run_bench(tmp_path, "--families", "llava-1.5", "--requests", "2", "--concurrency", "1,2", "--repeats", "1", "--untimed",
              scale="0.03")
    data = json.loads((tmp_path / "smoke.json").read_text())
    settings = ["stock vLLM", "zspa keep_rate=1", "zspa keep_rate=0.5", "zspa keep_rate=0.25", "zspa keep_rate=0.1",
                "zspa keep_rate=1, no --phase-timings", "ideal: encoder(full image) + LLM(l(0.1) tokens)"]
    assert [(row["concurrency"], row["setting"]) for row in data["rows"]] == [(c, s) for c in (1, 2) for s in settings]
    n = visual_tokens("llava-1.5", 1024, 768)
    for c in (1, 2):
        rows = {row["setting"]: row for row in data["rows"] if row["concurrency"] == c}
        stock = rows["stock vLLM"]
        stock_prompt = stock["prompt_tokens"]["median"]
        assert rows["zspa keep_rate=1"]["prompt_tokens"]["median"] == stock_prompt
        for rate in (0.5, 0.25, 0.1):
            row = rows[f"zspa keep_rate={rate:g}"]
            assert row["prompt_tokens"]["median"] == stock_prompt - (n - num_kept(n, rate))
            assert row["visual_tokens_kept"]["median"] == num_kept(n, rate)
            assert len(row["runs"]) == 1 and row["ttft_p50_ms"]["min"] > 0
            assert row["kv_admits_concurrency"] > stock["kv_admits_concurrency"]
            assert row["encoder_ms"]["median"] > 0 and row["selection_ms"]["median"] > 0  # timed in the workers
        # unpruned: the encoder is timed, nothing is selected; stock vLLM times nothing
        assert rows["zspa keep_rate=1"]["encoder_ms"]["median"] > 0 and rows["zspa keep_rate=1"]["selection_ms"]["median"] == 0
        assert "encoder_ms" not in stock and "selection_ms" not in stock
        untimed = rows["zspa keep_rate=1, no --phase-timings"]  # served whole, nothing timed in its workers
        assert untimed["prompt_tokens"]["median"] == stock_prompt and "encoder_ms" not in untimed
        for row in rows.values():  # vLLM's own histograms, and one gap per request (2 tokens)
            assert row["prefill_ms"]["median"] > 0 and row["decode_ms"]["median"] > 0 and row["itl_p99_ms"]["median"] > 0
            # TTFT less vLLM's queue and prefill times: the front end's (it decodes the image)
            assert row["front_ms"]["median"] > 0
        # the ideal prefills l(0.1) embedding rows and adds the full image's encoder time
        ideal = rows[settings[-1]]
        assert ideal["prompt_tokens"]["median"] == rows["zspa keep_rate=0.1"]["prompt_tokens"]["median"]
        assert ideal["ttft_p50_ms"]["median"] == pytest.approx(
            ideal["ttft_llm_only_p50_ms"]["median"] + ideal["encoder_ms"]["median"])
        assert ideal["encoder_ms"] == rows["zspa keep_rate=1"]["encoder_ms"] and "requests_per_s" not in ideal
    table = (tmp_path / "smoke.md").read_text()
    assert "| llava-1.5 | 2 | zspa keep_rate=0.1 |" in table and "Command: `" in table and "scaled by 0.03" in table
    assert (tmp_path / "smoke.png").read_bytes()[:4] == b"\x89PNG"


def test_serve_bench_chat_workloads_smallest_run(tmp_path):
    """The chat workloads: encoder work per conversation / image is what each setting
    should do (numbers of requests and encoder runs, not timings, are checked)."""
    turns, questions = 3, 3
    run_bench(tmp_path, "--workload", "chat", "--families", "llava-1.5", "--conversations", "1", "--turns", str(turns),
              "--images", "1", "--questions", str(questions), "--concurrency", "1", "--repeats", "1", timeout=1500)
    data = json.loads((tmp_path / "smoke_chat.json").read_text())

    def median(row, key):
        return row[key]["median"]

    chat = {row["setting"]: row for row in data["chat"]}
    stock, image_turn = chat["stock vLLM"], chat["zspa image_turn (default)"]
    last_turn, previous = chat["zspa last_turn"], chat["previous release: last_turn, no encoder cache"]
    assert len(stock["ttft_ms_by_turn"]) == turns
    # the image is encoded once per conversation, except the previous release's rule
    for row in (stock, image_turn):
        assert median(row, "encoder_inputs_per_conversation") == median(row, "encoder_runs_per_conversation") == 1
    assert median(last_turn, "encoder_inputs_per_conversation") == turns  # re-selected every turn ...
    assert median(last_turn, "encoder_runs_per_conversation") == 1  # ... from the encoder-output cache
    assert median(previous, "encoder_runs_per_conversation") == turns
    # image_turn keeps the prefix cache in later turns; last_turn loses it from the image on
    assert image_turn["cached_tokens_by_turn"][-1]["median"] >= 128
    assert last_turn["cached_tokens_by_turn"][-1]["median"] == 0

    same = {row["setting"]: row for row in data["questions"]}
    assert median(same["zspa (encoder cache on)"], "encoder_runs_per_image") == 1
    assert median(same["previous release: no encoder cache"], "encoder_runs_per_image") == questions
    assert median(same["stock vLLM"], "encoder_runs_per_image") == 1
    # later questions reuse the image's KV where its identity does not depend on the
    # question (query_scope first, divprune), and only there
    fresh = median(same["zspa (encoder cache on)"], "cached_tokens_later")
    assert median(same["zspa core_ratio 0"], "cached_tokens_later") == fresh
    for setting in ("zspa query_scope first", "zspa divprune"):
        assert median(same[setting], "encoder_runs_per_image") == 1
        assert median(same[setting], "cached_tokens_later") >= fresh + 96  # the 144 kept tokens' full blocks
    table = (tmp_path / "smoke_chat.md").read_text()
    assert "### Multi-turn chat" in table and "| llava-1.5 | zspa last_turn |" in table
    assert (tmp_path / "smoke_chat.png").read_bytes()[:4] == b"\x89PNG"


def test_serve_bench_video_workload_smallest_run(tmp_path):
    """The video workload through the HTTP servers (MPEG-4 data URLs): each keep rate
    shrinks the prompt by exactly n - l of the video's tokens, the usage report counts
    the video, and vLLM's EVS row is measured under MRv2, or reported with its error under
    V1 (vLLM 0.32's V1 CPU runner never strips EVS's position columns, so its requests fail)."""
    run_bench(tmp_path, "--workload", "video", "--families", "qwen2.5-vl", "--requests", "2", "--concurrency", "2",
              "--repeats", "1")
    data = json.loads((tmp_path / "smoke_video.json").read_text())
    rows = {row["setting"]: row for row in data["rows"]}
    evs = "vLLM EVS video_pruning_rate=0.75"
    assert list(rows) == ["stock vLLM", *(f"zspa keep_rate={r:g}" for r in (1, 0.5, 0.25, 0.1)), evs]
    n = (448 // 28) * (336 // 28) * (16 // 2)  # merged cells per grid step x steps of two frames
    stock_prompt = rows["stock vLLM"]["prompt_tokens"]["median"]
    assert rows["zspa keep_rate=1"]["visual_tokens_kept"]["median"] == n
    for rate in (1, 0.5, 0.25, 0.1):
        row = rows[f"zspa keep_rate={rate:g}"]
        assert row["prompt_tokens"]["median"] == stock_prompt - (n - num_kept(n, rate))
        assert row["visual_tokens_kept"]["median"] == num_kept(n, rate)
    print(f"\n[video] EVS row: {rows[evs].get('error') or rows[evs].get('prompt_tokens')}")
    if not mrv2_requested():  # V1's CPU runner never strips EVS's columns: the server's error, in the table too
        assert "Error" in rows[evs]["error"] and f"| {evs} | failed: " in (tmp_path / "smoke_video.md").read_text()
    else:  # MRv2 strips them (its MultiModalPruner): EVS runs and prunes
        assert "error" not in rows[evs], rows[evs]["error"]
        assert rows[evs]["prompt_tokens"]["median"] < stock_prompt
    assert (tmp_path / "smoke_video.png").read_bytes()[:4] == b"\x89PNG"
