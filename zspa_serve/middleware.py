"""The ASGI middleware in front of vLLM's OpenAI endpoints that take images.

Request: reads the body (413 past ``ZSPA_MAX_BODY_BYTES``), answers malformed JSON,
bad knobs and (unless the operator trusts clients) other processor kwargs with a 400
naming the field, media URLs the server must not fetch (zspa_serve/media.py) with a 400
naming the message part, copies the top-level knobs into vLLM's ``mm_processor_kwargs`` and
adds a tally id there (see ``zspa_vllm.frontend.request_counts``), appending that key to the client's
bytes rather than serializing the (image-laden) body again. Response: reports the request's visual tokens before and after
pruning in ``usage`` (JSON, and every SSE chunk that carries usage) and in the
``x-zspa-visual-tokens`` header ("kept/total"), and counts them for ``/metrics``.
Everything else passes through untouched.
"""

from __future__ import annotations

import json

import msgspec

from zspa_vllm import envs
from zspa_vllm.frontend import request_counts as tallies
from zspa_vllm.frontend.request_counts import TALLY_KWARG

from zspa_serve import media
from zspa_serve import metrics
from zspa_serve.knobs import MM_KWARGS, BadRequest, lift_knobs

# POST endpoints whose body takes images and vLLM's mm_processor_kwargs
KNOB_PATHS = ("/v1/chat/completions", "/v1/responses", "/tokenize")
HEADER = b"x-zspa-visual-tokens"


class ZspaMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or scope["method"] != "POST" or path not in KNOB_PATHS:
            return await self.app(scope, receive, send)
        try:
            body = await _read_body(scope, receive, envs.get(envs.MAX_BODY_BYTES))
            if body is None:
                return  # the client went away
            request = _parse(body)
            await _check_media_urls(request)
            had_mm_kwargs = MM_KWARGS in request
            knobs = lift_knobs(request, knobs_only=envs.get(envs.KNOBS_ONLY_MM_KWARGS))
            support = getattr(scope["app"].state, "zspa_support", None)
            if knobs and (support is None or not support.prunes):
                name = next(iter(knobs))
                reason = support.reason if support else "the server is not ready"
                raise BadRequest(f"{name}: visual token pruning is not available: {reason}", name)

            tally_id = None
            if support is not None and support.prunes and (path != "/tokenize" or "messages" in request):
                tally_id = tallies.open_tally()
                request.setdefault(MM_KWARGS, {})[TALLY_KWARG] = tally_id
            body = _rewrite(body, request, had_mm_kwargs, tally_id)
        except BadRequest as error:
            return await _send_json(send, error.status, error.body())
        try:
            await self.app(_with_length(scope, len(body)), _replay(body, receive), _Annotator(send, tally_id).send)
        finally:
            if tally_id is not None and (tally := tallies.close(tally_id)) is not None:
                metrics.count(tally)


async def _read_body(scope, receive, limit: int) -> bytes | None:
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"request body of {int(declared)} bytes exceeds the limit of {limit}", None, 413)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body exceeds the limit of {limit} bytes", None, 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


# msgspec (a vLLM dependency) decodes a body of megabytes of base64 in 0.7 ms where
# json.loads takes 1.6; it refuses what strict JSON does not allow (NaN, a lone
# surrogate, 1e400), which json.loads then decides, so what is accepted is unchanged
_STRICT_JSON = msgspec.json.Decoder()


def _decode(body: bytes):
    try:
        return _STRICT_JSON.decode(body)
    except (msgspec.DecodeError, RecursionError):  # (ValidationError is a DecodeError)
        return json.loads(body)


def _parse(body: bytes) -> dict:
    try:
        request = _decode(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    except RecursionError:  # the parser's own guard against a stack overflow
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(request, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(request).__name__}")
    return request


MEDIA_PARTS = ("image_url", "video_url", "audio_url", "input_image")


def _media_urls(request: dict):
    """(field, url) of every media URL in a chat request's ``messages`` or a responses
    request's ``input``."""
    for key in ("messages", "input"):
        turns = request.get(key)
        for i, turn in enumerate(turns if isinstance(turns, list) else []):
            content = turn.get("content") if isinstance(turn, dict) else None
            for j, part in enumerate(content if isinstance(content, list) else []):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in MEDIA_PARTS:
                    continue
                name = "image_url" if kind == "input_image" else kind
                value = part.get(name)
                url = value.get("url") if isinstance(value, dict) else value
                if isinstance(url, str):  # else vLLM's own validation names it
                    yield f"{key}[{i}].content[{j}].{name}", url


async def _check_media_urls(request: dict) -> None:
    """A 400 naming the field for a media URL the server must not use: an unknown scheme,
    or an http(s) host that is not a public address (zspa_serve/media.py)."""
    for field, url in _media_urls(request):
        reason = media.scheme_refusal(url)
        if reason is None and media.url_scheme(url) in ("http", "https"):
            reason = await media.url_refusal(url)
        if reason is not None:
            raise BadRequest(f"{field}: {reason}", field)


def _rewrite(body: bytes, request: dict, had_mm_kwargs: bool, tally_id: str | None) -> bytes:
    """The body vLLM gets. Serializing megabytes of base64 image data again costs ~3 ms per
    MB, so: no change, the client's bytes; only an ``mm_processor_kwargs`` the body did
    not have, the client's bytes with that key appended (top-level knobs stay where they
    were: vLLM ignores unknown fields); else the request serialized whole."""
    mm_kwargs = request.get(MM_KWARGS)
    stripped = body.rstrip()
    try:
        if mm_kwargs is None:
            return body
        if not had_mm_kwargs and stripped.endswith(b"}") and len(request) > 1:
            # one copy of the body (each + would copy it again)
            added = b', "' + MM_KWARGS.encode() + b'": ' + json.dumps(mm_kwargs).encode() + b"}"
            return b"".join((memoryview(body)[: len(stripped) - 1], added))
        return json.dumps(request).encode()
    except RecursionError:  # parsed just under the parser's depth limit, one level too deep here
        if tally_id is not None:
            tallies.close(tally_id)
        raise BadRequest("request body is nested too deeply") from None


def _with_length(scope, length: int) -> dict:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


def _replay(body: bytes, receive):
    """A receive() that yields the rewritten body once, then the client's own messages
    (a disconnect, which vLLM watches for to abort the request)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Annotator:
    """Wraps send(): holds the response start until the first body bytes (the prompt has
    been processed by then), adds the header, and the counts to every ``usage``."""

    def __init__(self, send, tally_id: str | None) -> None:
        self._send, self._tally_id = send, tally_id
        self._start = None
        self._json_parts: list[bytes] | None = None
        self._sse_rest = b""

    def _counts(self) -> dict | None:
        tally = tallies.peek(self._tally_id) if self._tally_id else None
        return tally.as_dict() if tally else None

    async def send(self, message) -> None:
        if self._tally_id is None:
            return await self._send(message)
        if message["type"] == "http.response.start":
            self._start = message
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if message["status"] == 200 and content_type.startswith(b"application/json"):
                self._json_parts = []
            return None
        if message["type"] != "http.response.body":
            return await self._send(message)
        if self._json_parts is not None:  # whole JSON document: buffer, then rewrite
            self._json_parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return None
            body = _annotate_json(b"".join(self._json_parts), self._counts())
            await self._send_start(len(body))
            return await self._send({"type": "http.response.body", "body": body})
        if self._start is not None:
            await self._send_start(None)
        body = self._annotate_sse(message.get("body", b""), final=not message.get("more_body", False))
        return await self._send({**message, "body": body})

    async def _send_start(self, length: int | None) -> None:
        start, self._start = self._start, None
        headers = [(k, v) for k, v in start.get("headers", []) if not (length is not None and k == b"content-length")]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        counts = self._counts() if start["status"] == 200 else None
        if counts is not None:
            headers.append((HEADER, f"{counts['visual_tokens_kept']}/{counts['visual_tokens']}".encode()))
        await self._send({**start, "headers": headers})

    def _annotate_sse(self, chunk: bytes, final: bool) -> bytes:
        # SSE events end with a blank line; an event split across chunks waits for its end
        if not self._sse_rest and chunk.endswith(b"\n\n") and b'"usage"' not in chunk:
            return chunk  # whole events, none with usage (most chunks): as they came
        data = self._sse_rest + chunk
        events = data.split(b"\n\n")
        self._sse_rest = b"" if final else events.pop()
        out = []
        for event in events:
            if event.startswith(b"data: {") and b'"usage"' in event:  # most chunks carry none
                event = b"data: " + _annotate_json(event[len(b"data: ") :], self._counts())
            out.append(event)
        return b"\n\n".join(out) + (b"\n\n" if events and not final else b"")


def _annotate_json(body: bytes, counts: dict | None) -> bytes:
    if counts is None:
        return body
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body
    usage = document.get("usage") if isinstance(document, dict) else None
    if not isinstance(usage, dict):
        return body
    usage.update(counts)
    return json.dumps(document).encode()
