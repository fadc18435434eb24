"""benchmarks/plugin_cost.py end to end at the smallest size (numbers meaningless, the
probes checked): every hook it names is reached and timed, on the right server, in the
API server and in the engine core's worker."""

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
# ... and in the engine core (benchmarks/server_probes/engine_times.py)
ENGINE_REACHED = ["engine: scheduler: charge unpruned tokens", "engine: worker: embed_multimodal (fields, encoder-output cache)"]
ENCODER = "vLLM engine: vision encoder + projector (the family's embed_multimodal)"
SELECTION = "engine: worker: selection (selection_order_with_core)"
AROUND_SELECTION = "engine: worker: around the selection (query embedding, kept rows)"


def test_plugin_cost_smallest_run(tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "plugin_cost.py"), "--families", "llava-1.5", "--scale", "0.03",
               "--concurrency", "1", "--requests", "2", "--repeats", "1", "--warmup", "0", "--max-tokens", "2",
               "--out", str(tmp_path), "--name", "smoke"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = {row["label"]: row for row in json.loads((tmp_path / "smoke.json").read_text())["rows"]}
    assert list(rows) == ["stock vLLM", "vllm serve + plugin, no knobs", "zspa, no knobs", "zspa keep_rate=1", "zspa keep_rate=0.1"]
    stock_own = rows["stock vLLM"]["runs"][0]["own_ms"]
    # vLLM's own phases are timed on both servers; none of our hooks run on stock
    assert stock_own["decode the image"] > 0 and stock_own["multimodal processor"] > 0
    assert not set(stock_own) & set(REACHED)
    assert stock_own[ENCODER] > 0 and stock_own["vLLM engine: schedule a step"] > 0
    assert not [name for name in stock_own if name.startswith("engine: ")]  # none of ours in stock's engine
    # the plugin in `vllm serve`: our processor and engine side, none of zspa-serve's HTTP layer
    plugin_own = rows["vllm serve + plugin, no knobs"]["runs"][0]["own_ms"]
    assert plugin_own["PruningProcessorMixin.apply"] > 0 and all(plugin_own[name] > 0 for name in ENGINE_REACHED)
    assert not [name for name in ("_parse", "_rewrite", "_Annotator.send", "lift_knobs") if plugin_own.get(name, 0) > 0]
    for label in ("zspa, no knobs", "zspa keep_rate=1"):
        own = rows[label]["runs"][0]["own_ms"]
        assert own["decode the image"] > 0 and own["multimodal processor"] > 0
        missing = [name for name in REACHED if own.get(name, 0) <= 0]
        assert not missing, f"{label}: hooks not timed: {missing}"
        # own time excludes vLLM's processor, which the hook calls
        assert own["PruningProcessorMixin.apply"] < own["multimodal processor"]
        missing = [name for name in ENGINE_REACHED if own.get(name, 0) <= 0]
        assert not missing and own[ENCODER] > 0, f"{label}: engine hooks not timed: {missing}"
        # own time excludes the vision encoder our embed_multimodal calls; nothing selected
        assert own["engine: worker: embed_multimodal (fields, encoder-output cache)"] < own[ENCODER]
        assert own.get(SELECTION, 0) == own.get(AROUND_SELECTION, 0) == 0
    pruned = rows["zspa keep_rate=0.1"]["runs"][0]["own_ms"]
    assert pruned[SELECTION] > 0 and pruned[AROUND_SELECTION] > 0 and pruned["engine: worker: counter files for /metrics"] > 0
    prompts = {label: row["runs"][0]["prompt_tokens"] for label, row in rows.items()}
    assert prompts["zspa, no knobs"] == prompts["zspa keep_rate=1"] == prompts["stock vLLM"] == prompts["vllm serve + plugin, no knobs"]
    assert prompts["stock vLLM"] > prompts["zspa keep_rate=0.1"]
    table = (tmp_path / "smoke.md").read_text()
    assert "| **ours, all hooks** |" in table and "| **ours, engine core and worker** |" in table and "TTFT vs stock" in table
