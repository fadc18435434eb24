"""Engine settings under which pruning would serve wrong tokens are refused when vLLM
builds its config (zspa_vllm/engine/config_checks.py), before any worker starts.

vLLM's own config construction runs in a child process, where the plugin loads through
its entry point exactly as in ``vllm serve`` (registration is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.engine.harness import FAMILIES, REPO_ROOT, fixture_path

pytestmark = pytest.mark.engine

CASES = {
    "qwen pp=2": ("qwen2.5-vl", {"pipeline_parallel_size": 2}),
    "qwen evs": ("qwen2.5-vl", {"video_pruning_rate": 0.5}),
    "llava tower lora": ("llava-1.5", {"enable_lora": True, "enable_tower_connector_lora": True}),
    "llava pp=2": ("llava-1.5", {"pipeline_parallel_size": 2}),  # 1-D RoPE: nothing to fix up
    "qwen tp=2": ("qwen2.5-vl", {"tensor_parallel_size": 2}),
    "qwen plain": ("qwen2.5-vl", {}),
    "qwen2 pp=2": ("qwen2-vl", {"pipeline_parallel_size": 2}),
    # every M-RoPE family the README names, and tower LoRA beyond LLaVA
    **{f"{family} pp=2": (family, {"pipeline_parallel_size": 2}) for family in ("qwen3-vl", "qwen3-vl-moe", "qwen3.5", "qwen3.5-moe")},
    **{f"{family} evs": (family, {"video_pruning_rate": 0.5}) for family in ("qwen3-vl", "qwen3.5")},
    "qwen tower lora": ("qwen2.5-vl", {"enable_lora": True, "enable_tower_connector_lora": True}),
    # a bad ZSPA_* value (zspa_vllm/envs.py) fails here, not at the first image in a worker
    "llava bad env": ("llava-1.5", {"env": {"ZSPA_PHASE_TIMINGS": "yes"}}),
}
ARCH = {family: FAMILIES[family].architecture for family in FAMILIES}

CHILD = """
import json, os, sys
from vllm.engine.arg_utils import EngineArgs
results = {}
for name, (model, kwargs) in json.loads(sys.argv[1]).items():
    env = kwargs.pop("env", {})
    os.environ.update(env)
    try:
        EngineArgs(model=model, max_model_len=4096, **kwargs).create_engine_config()
        results[name] = None
    except Exception as error:  # what vLLM raises for a refused config
        results[name] = str(error)
    finally:
        for key in env:
            del os.environ[key]
print(json.dumps(results))
"""


def build_configs(plugins: str | None) -> dict[str, str | None]:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}
    if plugins is not None:
        env["VLLM_PLUGINS"] = plugins
    cases = {name: (str(fixture_path(family)), kwargs) for name, (family, kwargs) in CASES.items()}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_settings_that_would_misplace_pruned_tokens_are_refused_at_start_up():
    refused = build_configs(None)  # every installed plugin: zspa included
    assert "zspa-vllm cannot serve Qwen2_5_VLForConditionalGeneration with pipeline_parallel_size=2" in refused["qwen pp=2"]
    assert "use tensor parallelism instead" in refused["qwen pp=2"]
    assert "zspa-vllm cannot serve Qwen2VLForConditionalGeneration with pipeline_parallel_size=2" in refused["qwen2 pp=2"]
    assert "video_pruning_rate=0.5" in refused["qwen evs"]
    assert "zspa-vllm cannot serve LlavaForConditionalGeneration with enable_tower_connector_lora" in refused["llava tower lora"]
    for family in ("qwen3-vl", "qwen3-vl-moe", "qwen3.5", "qwen3.5-moe"):
        assert f"zspa-vllm cannot serve {ARCH[family]} with pipeline_parallel_size=2" in refused[f"{family} pp=2"]
    for family in ("qwen3-vl", "qwen3.5"):
        assert f"zspa-vllm cannot serve {ARCH[family]} with video_pruning_rate=0.5" in refused[f"{family} evs"]
    assert "zspa-vllm cannot serve Qwen2_5_VLForConditionalGeneration with enable_tower_connector_lora" in refused["qwen tower lora"]
    assert "zspa-vllm: ZSPA_PHASE_TIMINGS must be 0 or 1, got 'yes'" in refused["llava bad env"]
    for accepted in ("llava pp=2", "qwen tp=2", "qwen plain"):
        assert refused[accepted] is None, refused[accepted]

    stock = build_configs("")  # the same settings without the plugin are vLLM's to judge
    assert all(reason is None or "zspa" not in reason for reason in stock.values()), stock
    assert stock["qwen pp=2"] is None and stock["llava bad env"] is None
