"""The request layer's shortcuts around megabyte bodies give what the slow way gives."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from zspa_serve import media
from zspa_serve.middleware import _Annotator, _rewrite

TRICKY_URLS = [
    "http://example.com/a.png",
    "HTTPS://example.com/a.png",
    "  http://example.com/a.png",  # leading spaces: urlsplit strips them
    "\x00\x01http://example.com/",  # leading C0 controls too
    "ht\ttp://example.com/",  # a tab inside the scheme: urlsplit removes it
    "h\nttps://example.com/",
    "data:image/png;base64,iVBORw0KGgo=",
    "DATA:image/png;base64,AAAA",
    "file:///etc/passwd",
    "ftp://example.com/x",
    "1http://example.com/",  # a scheme must start with a letter
    "c:/windows/path",
    "//example.com/no-scheme",
    ":leading-colon",
    "no colon at all",
    "javascript:alert(1)",
    "sch eme://x",  # a space: not a scheme
    "",
]


@pytest.mark.parametrize("url", TRICKY_URLS)
def test_the_scheme_from_the_prefix_is_urlsplits(url):
    assert media.url_scheme(url) == (urlsplit(url).scheme.lower() if ":" in url else "")
    assert media.url_scheme(url + "A" * 1000) == media.url_scheme(url)


def test_the_tricky_urls_tell_a_naive_scheme_apart():
    # sensitivity: reading up to the first colon without urlsplit's rules gets some wrong
    naive = [url.split(":")[0].lower() if ":" in url else "" for url in TRICKY_URLS]
    right = [media.url_scheme(url) for url in TRICKY_URLS]
    assert sum(a != b for a, b in zip(naive, right)) >= 5


@pytest.mark.parametrize("trailer", [b"", b"\n", b"  \r\n"])
def test_an_appended_mm_processor_kwargs_keeps_the_clients_bytes(trailer):
    client = {"model": "m", "messages": [{"role": "user", "content": "x" * 5000}], "keep_rate": 0.5}
    body = json.dumps(client).encode() + trailer
    request = {**json.loads(body), "mm_processor_kwargs": {"keep_rate": 0.5, "zspa_tally": "abc"}}
    rewritten = _rewrite(body, request, had_mm_kwargs=False, tally_id="abc")
    assert json.loads(rewritten) == request
    assert rewritten.startswith(body.rstrip()[:-1])
    # a body that had the key is serialized whole, with the request's value
    had = {**request, "mm_processor_kwargs": {"keep_rate": 0.25}}
    assert json.loads(_rewrite(json.dumps(had).encode(), had, had_mm_kwargs=True, tally_id=None)) == had
    # no kwargs to add: the client's very bytes
    assert _rewrite(body, {"model": "m"}, had_mm_kwargs=False, tally_id=None) is body


def _stream(chunks: list[bytes], counts: dict | None) -> list[bytes]:
    """What ``_Annotator`` sends on for these response body chunks (a 200 SSE stream)."""
    import asyncio

    from zspa_vllm.frontend import request_counts

    tally_id = request_counts.open_tally()
    if counts:
        request_counts.record(tally_id, "zspa", [(counts["visual_tokens"], counts["visual_tokens_kept"])])
    sent = []

    async def downstream(message):
        sent.append(message)

    async def run():
        annotator = _Annotator(downstream, tally_id)
        await annotator.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i, chunk in enumerate(chunks):
            await annotator.send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    asyncio.run(run())
    request_counts.close(tally_id)
    return [m["body"] for m in sent if m["type"] == "http.response.body"]


def test_sse_chunks_without_usage_pass_as_they_came():
    events = [b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n', b'data: {"choices": [{"delta": {"content": "b"}}]}\n\n',
              b'data: {"choices": [], "usage": {"prompt_tokens": 5}}\n\n', b"data: [DONE]\n\n"]
    counts = {"visual_tokens": 576, "visual_tokens_kept": 58}
    whole = _stream(events, counts)
    assert whole[:2] == events[:2] and whole[3] == events[3]
    assert json.loads(whole[2][len(b"data: "):]) == {"choices": [], "usage": {"prompt_tokens": 5, **counts}}
    # the same stream cut anywhere (events split across chunks) gives the same bytes
    stream = b"".join(events)
    for cut in range(1, len(stream), 7):
        assert b"".join(_stream([stream[:cut], stream[cut:]], counts)) == b"".join(whole)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "keep_rate": 0.25, "messages": [{"role": "user", "content": "\\u00e9\\n"}]}',
        b' {"a": 123456789012345678901234567890, "b": 1.0000000000000002, "c": -0.0, "d": 5e-324} ',
        b'{"a": 1, "a": 2}',
        # refused by the fast strict decoder, decided by json.loads as before
        b'{"keep_rate": NaN}',
        b'{"keep_rate": 1e400}',
        b'{"text": "\\ud800"}',
    ],
)
def test_the_body_parses_as_json_loads_parses_it(body):
    import msgspec

    from zspa_serve.middleware import _STRICT_JSON, _parse

    parsed, expected = _parse(body), json.loads(body)
    assert json.dumps(parsed) == json.dumps(expected)  # (NaN != NaN: compared as text)
    assert [type(v) for v in parsed.values()] == [type(v) for v in expected.values()]
    if any(token in body for token in (b"NaN", b"1e400", b"\\ud800")):
        with pytest.raises(msgspec.DecodeError):  # the fallback is what accepted it
            _STRICT_JSON.decode(body)


@pytest.mark.parametrize(
    "body, message",
    [(b'{"a": }', "not valid JSON"), (b"\xff{}", "not valid JSON"), (b"[1]", "must be a JSON object, got list"),
     (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")],
    ids=["malformed", "not utf-8", "a list", "too deep"],
)
def test_a_body_that_is_no_json_object_is_a_bad_request(body, message):
    from zspa_serve.knobs import BadRequest
    from zspa_serve.middleware import _parse

    with pytest.raises(BadRequest, match=message):
        _parse(body)
