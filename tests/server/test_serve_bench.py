"""benchmarks/serve_bench.py end to end at the smallest size (numbers meaningless, the
pipeline and its outputs checked): stock vLLM and zspa-serve side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.harness import visual_tokens
from zspa_vllm.prune import num_kept

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]


def run_bench(tmp_path, *args: str, timeout: int = 1200) -> None:
    """serve_bench.py at the smallest model size (a 2x128 LLM, 2 output tokens, no
    warm-up), writing smoke*.{md,json,png} into ``tmp_path``."""
    command = [sys.executable, str(REPO / "benchmarks" / "serve_bench.py"), *args, "--hidden", "128", "--layers", "2",
               "--max-tokens", "2", "--warmup", "0", "--kv-cache-gib", "1", "--out", str(tmp_path), "--name", "smoke"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]


def test_serve_bench_smallest_run(tmp_path):
    run_bench(tmp_path, "--families", "llava-1.5", "--requests", "3", "--concurrency", "3", "--repeats", "2")
    data = json.loads((tmp_path / "smoke.json").read_text())
    rows = {row["setting"]: row for row in data["rows"]}
    assert list(rows) == ["stock vLLM", "zspa keep_rate=1", "zspa keep_rate=0.5", "zspa keep_rate=0.25", "zspa keep_rate=0.1"]
    n = visual_tokens("llava-1.5", 1024, 768)
    stock_prompt = rows["stock vLLM"]["prompt_tokens"]["median"]
    assert rows["zspa keep_rate=1"]["prompt_tokens"]["median"] == stock_prompt
    for rate in (0.5, 0.25, 0.1):
        row = rows[f"zspa keep_rate={rate:g}"]
        assert row["prompt_tokens"]["median"] == stock_prompt - (n - num_kept(n, rate))
        assert row["visual_tokens_kept"]["median"] == num_kept(n, rate)
        assert len(row["runs"]) == 2 and row["ttft_p50_ms"]["min"] > 0
        assert row["kv_admits_concurrency"] > rows["stock vLLM"]["kv_admits_concurrency"]
    table = (tmp_path / "smoke.md").read_text()
    assert "| llava-1.5 | zspa keep_rate=0.1 |" in table and "Command: `" in table
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
    table = (tmp_path / "smoke_chat.md").read_text()
    assert "### Multi-turn chat" in table and "| llava-1.5 | zspa last_turn |" in table
    assert (tmp_path / "smoke_chat.png").read_bytes()[:4] == b"\x89PNG"


def test_serve_bench_video_workload_smallest_run(tmp_path):
    """The video workload through the HTTP servers (MPEG-4 data URLs): each keep rate
    shrinks the prompt by exactly n - l of the video's tokens, the usage report counts
    the video, and vLLM's EVS row is either measured or reported with its error (vLLM
    0.32's CPU backend never strips EVS's position columns, so its requests fail here)."""
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
    if "error" in rows[evs]:  # the server's error, in the table too
        assert "Error" in rows[evs]["error"] and f"| {evs} | failed: " in (tmp_path / "smoke_video.md").read_text()
    else:
        assert rows[evs]["prompt_tokens"]["median"] < stock_prompt
    assert (tmp_path / "smoke_video.png").read_bytes()[:4] == b"\x89PNG"
