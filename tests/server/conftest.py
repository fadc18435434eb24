"""A real ``zspa-serve --demo`` process on 127.0.0.1, shared by the server tests."""

from __future__ import annotations

import pytest

from tests.fixtures.images import image_url  # noqa: F401  (the server tests import it from here)
from zspa_serve.launch import ServerProcess

API_KEY = "test-key-123"
MAX_BODY_BYTES = 4 * 1024 * 1024  # small, so the 413 test sends little


def chat_body(model: str, seed: int, question: str = "What color is the big circle?", **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image_url(seed)}}, {"type": "text", "text": question}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0, **extra}


SERVER_ENV = {"ZSPA_MAX_BODY_BYTES": str(MAX_BODY_BYTES), "VLLM_CPU_KVCACHE_SPACE": "1"}


def start(tmp_path_factory, *args: str) -> ServerProcess:
    """``zspa-serve ARGS --api-key API_KEY``, healthy."""
    log = tmp_path_factory.mktemp("zspa-serve") / "server.log"
    server = ServerProcess([*args, "--api-key", API_KEY], log, env=SERVER_ENV)
    seconds = server.wait_healthy(timeout=600)
    print(f"\n[zspa-serve] {' '.join(args)}: healthy after {seconds:.1f} s")
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    server = start(tmp_path_factory, "--demo", "--phase-timings")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model(server) -> str:
    import httpx

    response = httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    return response.json()["data"][0]["id"]
