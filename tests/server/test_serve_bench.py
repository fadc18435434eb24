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


def test_serve_bench_smallest_run(tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "serve_bench.py"), "--families", "llava-1.5",
               "--hidden", "128", "--layers", "2", "--requests", "3", "--concurrency", "3", "--max-tokens", "2",
               "--repeats", "2", "--warmup", "0", "--kv-cache-gib", "1", "--out", str(tmp_path), "--name", "smoke"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
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
