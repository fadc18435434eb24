"""benchmarks/plugin_cost.py end to end at the smallest size (numbers meaningless, the
probe checked): every hook it names is reached and timed, on the right server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
# the hooks every unpruned streamed image request goes through
REACHED = ["_parse", "_check_media_urls", "_rewrite", "_read_body", "_Annotator.send", "lift_knobs",
           "PruningProcessorMixin.apply", "PruningProcessorMixin._get_mm_hashes", "open_tally", "close"]


def test_plugin_cost_smallest_run(tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "plugin_cost.py"), "--families", "llava-1.5", "--scale", "0.03",
               "--concurrency", "1", "--requests", "2", "--repeats", "1", "--warmup", "0", "--max-tokens", "2",
               "--out", str(tmp_path), "--name", "smoke"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = {row["label"]: row for row in json.loads((tmp_path / "smoke.json").read_text())["rows"]}
    assert list(rows) == ["stock vLLM", "zspa, no knobs", "zspa keep_rate=1", "zspa keep_rate=0.1"]
    stock_own = rows["stock vLLM"]["runs"][0]["own_ms"]
    # vLLM's own phases are timed on both servers; none of our hooks run on stock
    assert stock_own["decode the image"] > 0 and stock_own["multimodal processor"] > 0
    assert not set(stock_own) & set(REACHED)
    for label in ("zspa, no knobs", "zspa keep_rate=1"):
        own = rows[label]["runs"][0]["own_ms"]
        assert own["decode the image"] > 0 and own["multimodal processor"] > 0
        missing = [name for name in REACHED if own.get(name, 0) <= 0]
        assert not missing, f"{label}: hooks not timed: {missing}"
        # own time excludes vLLM's processor, which the hook calls
        assert own["PruningProcessorMixin.apply"] < own["multimodal processor"]
    prompts = {label: row["runs"][0]["prompt_tokens"] for label, row in rows.items()}
    assert prompts["zspa, no knobs"] == prompts["zspa keep_rate=1"] == prompts["stock vLLM"] > prompts["zspa keep_rate=0.1"]
    table = (tmp_path / "smoke.md").read_text()
    assert "| **ours, all hooks** |" in table and "TTFT vs stock" in table
