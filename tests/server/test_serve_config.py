"""zspa-serve configurations besides the shared demo server: server-wide knob defaults,
and a model the plugin does not support (a text-only Llama cut out of the LLaVA fixture)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from zspa_serve.launch import ServerProcess
from tests.server.conftest import API_KEY, SERVER_ENV, chat_body, start
from zspa_vllm.core.selection import num_kept

pytestmark = pytest.mark.server

N = 144  # the demo model's visual tokens per image
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CPU_ARGS = ["--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"]


def post(server, body) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)


def kept(response) -> int:
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["visual_tokens"] == N
    return usage["visual_tokens_kept"]


def test_server_wide_defaults_and_per_request_overrides(tmp_path_factory):
    """Also: --allow-private-media-urls lets a request's image come from a loopback host (the
    shared server refuses it: tests/server/test_hostile_media.py); a file under
    --allowed-local-media-path is read; past --limit-mm-per-prompt is a 400."""
    from tests.server.test_hostile_media import ImageHost

    import base64

    from tests.server.conftest import image_url

    media_dir = tmp_path_factory.mktemp("media")
    (media_dir / "local.png").write_bytes(base64.b64decode(image_url(28).partition(",")[2]))
    server = start(
        tmp_path_factory, "--demo", "--keep-rate", "0.5", "--core-ratio", "0.3", "--allow-private-media-urls",
        "--limit-mm-per-prompt", '{"image": 2}', "--allowed-local-media-path", str(media_dir),
    )
    host = ImageHost()
    try:
        model = httpx.get(f"{server.base_url}/v1/models", headers=AUTH).json()["data"][0]["id"]
        assert kept(post(server, chat_body(model, 21))) == num_kept(N, 0.5)  # the server default
        assert kept(post(server, chat_body(model, 22, keep_rate=0.1))) == num_kept(N, 0.1)
        assert kept(post(server, chat_body(model, 23, keep_rate=1))) == N
        assert kept(post(server, chat_body(model, 24, prune_method="none"))) == N
        body = chat_body(model, 25)
        body["messages"][0]["content"][0]["image_url"]["url"] = f"{host.url}/on-loopback.png"
        assert kept(post(server, body)) == num_kept(N, 0.5)
        assert host.hits == ["/on-loopback.png"]
        # a local file under --allowed-local-media-path is served; one outside it is a 400
        local = chat_body(model, 28)
        local["messages"][0]["content"][0]["image_url"]["url"] = f"file://{media_dir}/local.png"
        assert kept(post(server, local)) == num_kept(N, 0.5)
        local["messages"][0]["content"][0]["image_url"]["url"] = "file:///etc/passwd"
        outside = post(server, local)
        assert outside.status_code == 400 and "must be a subpath" in outside.json()["error"]["message"], outside.text
        # more images than the server allows per prompt: vLLM's 400, naming the modality
        three = chat_body(model, 26)
        three["messages"][0]["content"][:1] *= 3
        too_many = post(server, three)
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "image", too_many.text
        two = chat_body(model, 27)
        two["messages"][0]["content"][:1] *= 2
        assert post(server, two).json()["usage"]["visual_tokens"] == 2 * N
    finally:
        host.close()
        server.stop()


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """LlamaForCausalLM: the LLaVA-1.5 fixture's language model, weights renamed."""
    from safetensors.torch import load_file, save_file

    from tests.engine.harness import fixture_path

    src, out = fixture_path("llava-1.5"), tmp_path_factory.mktemp("text-model")
    weights = load_file(src / "model.safetensors")
    prefix = "language_model."
    save_file({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, out / "model.safetensors")
    config = json.loads((src / "config.json").read_text())["text_config"]
    (out / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32"}))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(src / name, out / name)
    return str(out)


def test_knobs_on_a_model_without_pruning_are_400(tmp_path_factory, text_model):
    server = start(tmp_path_factory, text_model, *CPU_ARGS)
    try:
        text = {"model": text_model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
        plain = post(server, text)
        assert plain.status_code == 200, plain.text
        assert "visual_tokens" not in plain.json()["usage"]
        for knobs, param in [({"keep_rate": 0.5}, "keep_rate"), ({"mm_processor_kwargs": {"core_ratio": 0.1}}, "core_ratio")]:
            response = post(server, {**text, **knobs})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == param
            assert "LlamaForCausalLM" in error["message"] and "LlavaForConditionalGeneration" in error["message"]
        assert post(server, text).status_code == 200  # still healthy
    finally:
        server.stop()


def test_default_knobs_on_a_model_without_pruning_refuse_to_start(tmp_path, text_model):
    server = ServerProcess([text_model, *CPU_ARGS, "--keep-rate", "0.5"], tmp_path / "server.log", env=SERVER_ENV)
    try:
        with pytest.raises(RuntimeError, match="exited"):
            server.wait_healthy(timeout=300)
        assert "sets ['keep_rate'], but model" in server.log_tail(10**6)
    finally:
        server.stop()
