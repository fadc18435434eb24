"""Hostile media against a real zspa-serve: every case a 400 naming what is wrong, nothing
fetched from an internal address, and the server still serving afterwards
(zspa_serve/media.py, zspa_serve/middleware.py)."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.server.conftest import API_KEY, image_url
from zspa_vllm import envs

pytestmark = pytest.mark.server

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def ask(server, model, url: str, kind: str = "image_url") -> httpx.Response:
    content = [{"type": "text", "text": "What is it?"}, {"type": kind, kind: {"url": url}}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)


def png_header_only(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A PNG that claims ``width x height`` pixels in a few dozen bytes (a decompression
    bomb's header; no decoder gets to the pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def png(seed: int = 1) -> bytes:
    return base64.b64decode(image_url(seed).partition(",")[2])


def assert_400(response: httpx.Response, *words: str, param: str | None = None) -> dict:
    assert response.status_code == 400, (response.status_code, response.text[:500])
    error = response.json()["error"]
    for word in words:
        assert word in error["message"], error
    if param is not None:
        assert error["param"] == param, error
    return error


class ImageHost:
    """An HTTP server on a loopback address that counts what it was asked for: the
    internal service a request must not make the server reach."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        hits = self.hits = []
        body = png(7)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", self.path.partition("?to=")[2])
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def image_host():
    host = ImageHost()
    yield host
    host.close()


def test_loopback_and_internal_urls_are_refused_before_any_fetch(server, model, image_host):
    port = image_host.url.rsplit(":", 1)[1]
    for url in (
        f"{image_host.url}/secret.png",
        f"http://localhost:{port}/secret.png",  # a name that resolves to loopback
        f"http://[::1]:{port}/secret.png",
        f"http://[::ffff:127.0.0.1]:{port}/secret.png",  # IPv4-mapped IPv6
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://10.1.2.3/internal.png",
        "http://0.0.0.0/x.png",
    ):
        assert_400(ask(server, model, url), "non-public address", "--allow-private-media-urls", param="messages[0].content[1].image_url")
    assert image_host.hits == []
    # a video URL too, and the other endpoints that take media
    assert_400(ask(server, model, f"{image_host.url}/v.mp4", "video_url"), param="messages[0].content[1].video_url")
    url = f"{image_host.url}/secret.png"
    content = [{"type": "input_text", "text": "What is it?"}, {"type": "input_image", "image_url": url}]
    body = {"model": model, "input": [{"role": "user", "content": content}], "max_output_tokens": 2}
    response = httpx.post(f"{server.base_url}/v1/responses", json=body, headers=AUTH, timeout=120)
    assert_400(response, "non-public address", param="input[0].content[1].image_url")
    body = {"model": model, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    response = httpx.post(f"{server.base_url}/tokenize", json=body, headers=AUTH, timeout=120)
    assert_400(response, "non-public address", param="messages[0].content[0].image_url")
    assert image_host.hits == []


def test_unknown_schemes_and_local_files_are_400s(server, model):
    assert_400(ask(server, model, "ftp://example.com/x.png"), "scheme 'ftp'", param="messages[0].content[1].image_url")
    assert_400(ask(server, model, "gopher://127.0.0.1:70/"), "scheme 'gopher'", param="messages[0].content[1].image_url")
    # vLLM answers this one with a 500 ("Cannot load local files ..."): the server was not
    # started with --allowed-local-media-path
    assert_400(ask(server, model, "file:///etc/passwd"), "file URLs are refused", param="image_url")


def test_bad_image_data_is_a_400_and_the_server_keeps_serving(server, model):
    good = png(3)
    cases = {
        "a 40000x40000 bomb header": data_url(png_header_only(40000, 40000)),
        "over the pixel limit": data_url(png_header_only(8000, 6000, bit_depth=8, color_type=2)),  # 48 M > 40 M
        "truncated": data_url(good[: len(good) // 2]),
        "not an image": data_url(b"hello, world" * 10),
        "bad base64": "data:image/png;base64,@@@not-base64@@@",
        "an SVG (not an image format vLLM decodes)": "data:image/svg+xml;base64,PHN2Zy8+",
    }
    for name, url in cases.items():
        response = ask(server, model, url)
        assert response.status_code == 400, (name, response.status_code, response.text[:300])
    assert_400(ask(server, model, cases["a 40000x40000 bomb header"]), "image_url")
    # media the model does not take: vLLM's own 400, naming the modality
    assert_400(ask(server, model, "data:video/mp4;base64,AAAA", "video_url"), "At most 0 video", param="video")
    assert_400(ask(server, model, "data:audio/wav;base64,AAAA", "audio_url"), "At most 0 audio", param="audio")
    # the same image whole is served: each refusal above is about its data
    assert ask(server, model, data_url(good)).status_code == 200
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200


def test_a_redirect_to_an_internal_address_is_refused(monkeypatch):
    """The connector itself (the request layer's check sees only the first URL): a host the
    check takes for public that redirects to loopback is refused at the redirect. 127.0.0.2
    stands in for the public host (the only addresses here are loopback ones)."""
    import asyncio

    from vllm.exceptions import VLLMValidationError
    from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY
    from vllm.multimodal.media.image import ImageMediaIO

    from zspa_serve import media

    media.install()
    public, internal = ImageHost("127.0.0.2"), ImageHost("127.0.0.1")
    try:
        original = media.is_public
        monkeypatch.setattr(media, "is_public", lambda address: address == "127.0.0.2" or original(address))
        connector = MEDIA_CONNECTOR_REGISTRY.load(media.CONNECTOR_NAME)

        redirect = f"{public.url}/redirect?to={internal.url}/secret.png"

        async def scenario():
            load = lambda url: connector.load_from_url_async(url, ImageMediaIO(), fetch_timeout=10)  # noqa: E731
            image = await load(f"{public.url}/img.png")  # the stand-in public host is fetched
            assert image.size == (320, 240) and public.hits == ["/img.png"]
            with pytest.raises(VLLMValidationError, match="non-public address"):
                await load(redirect)  # to an address literal: refused at the redirect
            port = internal.url.rsplit(":", 1)[1]
            with pytest.raises(VLLMValidationError, match="'localhost' is .* non-public address"):
                await load(f"{public.url}/redirect?to=http://localhost:{port}/secret.png")  # by name: at resolution
            assert internal.hits == []
            # the same redirect with private addresses allowed reaches it: the refusal above is the check's
            monkeypatch.setenv(envs.ALLOW_PRIVATE_MEDIA_URLS, "1")
            await load(redirect)
            assert internal.hits == ["/secret.png"]

        asyncio.run(scenario())
    finally:
        public.close()
        internal.close()
